"""Sanity checks for an evaluation (Athalye et al. 2018; Carlini et al. 2019; Croce et al. 2022).

`sanity_checks(purifier, classifier, x, y)` attacks the defended model the way the harness would (through
the purifier when it is differentiable, with BPDA when it is not, with EOT when it is random) and returns a
pass/fail table with the numbers. A failed check means the evaluation cannot be trusted as it stands,
most often because gradients are masked: the attack, not the defense, is failing.

| check | passes when |
|---|---|
| eps_zero_is_clean | the attack at ε = 0 gives exactly the clean accuracy |
| gradients_nonzero | the loss gradient at the clean images is non-zero for (almost) every image |
| monotone_in_eps | accuracy does not rise with ε (within a tolerance of a few images) |
| large_eps_to_chance | at ε = 1 (unbounded), iterative FGSM from the clean image reaches chance or below |
| more_steps_not_better | 4× more PGD steps never raise accuracy |
| pgd_not_weaker_than_fgsm | PGD accuracy ≤ FGSM accuracy |
| noise_weaker_than_attack | uniform ±ε noise costs at most half of what the attack costs |
| whitebox_not_above_transfer | white-box (or BPDA) accuracy ≤ transfer accuracy (needs a surrogate) |
| eot_converged | random defenses: accuracy stops falling as EOT grows (default 1 → 10 → 20) |
| randomness_declared | `randomized=False`: two calls on the same images agree; `randomized=True`: after `reseed`, the draws repeat whatever torch's global RNG state (the purifier uses its own generator) |

When the attacked model has no gradient path to the input at all (a purifier that returns a detached
tensor, or runs under `torch.no_grad()`), `gradients_nonzero` fails with that diagnosis and the checks that
need an attack are reported as not run (passed None) instead of crashing inside autograd.
Arguments are checked first: eps a budget in (0, 1] (8 is an error suggesting 8/255), steps, eot_samples and
defense_runs ints ≥ 1, images and labels as in `lib.eval.evaluation.evaluate`.
"""
from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lib.attacks.registry import STEPS_HINT, build_attack, run_attack
from lib.eval.evaluation import EOT_HINT, RUNS_HINT, check_inputs, evaluate, score
from lib.core.purifiers import Identity, is_differentiable, is_randomized, reseed
from lib.core.settings import check_count, check_eps
from lib.attacks.threat_models import attacked_model, parse_threat_model
from lib.defenses.transforms import BitDepthReduction


class MaskedGradientQuantizer(BitDepthReduction):
    """A planted negative control: bit-depth reduction that *claims* to be differentiable.

    Rounding has a zero gradient almost everywhere, so a white-box attack through it cannot move and the
    defense looks robust. The sanity checks must flag it; BPDA (identity on the backward pass) breaks it.
    """

    differentiable = True  # deliberately wrong, as in many published evaluations

    def __init__(self, bits: int = 3):
        super().__init__(bits)


def default_threat_model(purifier: nn.Module) -> str:
    """White-box through a differentiable purifier, BPDA otherwise; plus EOT for a random one."""
    base = "white-box" if is_differentiable(purifier) else "bpda"
    return base + "+eot" if is_randomized(purifier) else base


def _gradient_nonzero_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """The fraction of images whose loss gradient is non-zero; None when the loss does not depend on x at all."""
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    if not loss.requires_grad:
        return None
    grad, = torch.autograd.grad(loss, x, allow_unused=True)
    if grad is None:
        return None
    return float((grad.flatten(1).abs().sum(1) > 0).float().mean())


def _randomness_check(purifier: nn.Module, x: torch.Tensor, seed: int) -> tuple[bool, str, str]:
    """Does the purifier's randomness match its `randomized` flag? (passed, numbers, meaning)."""
    probe = x[:8]
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        if not is_randomized(purifier):
            a, b = purifier(probe), purifier(probe)
            gap = float((a - b).abs().max())
            if gap <= 1e-6:
                return True, "two calls on the same images agree", "randomized=False and the purifier is deterministic"
            return (False, f"two calls on the same images differ by up to {gap:.3g} although randomized=False",
                    "the purifier draws randomness without declaring it: set `randomized = True` and draw from "
                    "`self.generator(x.device)` (lib.core.purifiers), so that EOT and defense_runs apply")
        outputs = []
        for global_seed in (1, 2):
            reseed(purifier, seed)
            torch.manual_seed(global_seed)
            outputs.append(purifier(probe))
        reseed(purifier, seed)
        gap = float((outputs[0] - outputs[1]).abs().max())
        if gap <= 1e-6:
            return True, "after reseed the draws repeat", "randomized=True and the draws come from its own generator"
        return (False, f"after reseed({seed}) two calls differ by up to {gap:.3g} under different global RNG states",
                "the purifier draws from torch's global RNG, which attacks reseed (APGD does): draw from "
                "`self.generator(x.device)` instead (lib.core.purifiers)")


def sanity_checks(purifier: nn.Module | None, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  eps: float = 8 / 255, steps: int = 10, threat_model: str | None = None,
                  surrogate: nn.Module | None = None, eot_samples: int = 10, defense_runs: int = 3,
                  seed: int = 0, num_classes: int | None = None, eot_curve: tuple[int, ...] = (1, 10, 20)
                  ) -> pd.DataFrame:
    """Run every check; returns a table (check, passed, numbers, meaning). passed is None when skipped.

    `eot_curve`: the EOT sample counts of the convergence check (random defenses only); accuracy must not
    fall by more than 2 points (or a few images) between its last two entries.
    """
    eps = check_eps(eps)
    if eps == 0:
        raise ValueError("eps=0 leaves nothing to check (every attack is a no-op); pass the budget of the "
                         "evaluation, e.g. eps=8/255.")
    steps = check_count(steps, "steps", 1, STEPS_HINT)
    eot_samples = check_count(eot_samples, "eot_samples", 1, EOT_HINT)
    defense_runs = check_count(defense_runs, "defense_runs", 1, RUNS_HINT)
    if (len(eot_curve) < 2 or any(isinstance(k, bool) or not isinstance(k, int) for k in eot_curve)
            or eot_curve[0] < 1 or any(b <= a for a, b in zip(eot_curve, eot_curve[1:]))):
        raise ValueError(f"eot_curve must be at least two increasing sample counts ≥ 1, e.g. (1, 10, 20); got {eot_curve}.")
    if threat_model is not None:
        parse_threat_model(threat_model)
    purifier = (purifier or Identity()).eval()
    classifier = classifier.eval()
    threat_model = threat_model or default_threat_model(purifier)
    random = is_randomized(purifier)
    num_classes = check_inputs(classifier, x, y, num_classes)
    n = len(y)
    tol = 3 / n  # a few images of slack: accuracies are estimates
    chance = 1 / num_classes
    common = dict(threat_model=threat_model, eot_samples=eot_samples, defense_runs=defense_runs, seed=seed)

    def acc(attack: str, e: float, s: int = steps, **kw) -> float:
        return evaluate(purifier, classifier, x, y, attack=attack, eps=e, steps=s, **{**common, **kw})["accuracy"]

    rows = []

    def add(check, passed, numbers, meaning):
        rows.append({"check": check, "passed": passed, "numbers": numbers, "meaning": meaning})

    clean = float(score(purifier, classifier, x, y, defense_runs if random else 1, seed)["worst"].float().mean())
    declared = _randomness_check(purifier, x, seed)
    model = attacked_model(threat_model, purifier, classifier, surrogate, eot_samples)
    reseed(purifier, seed)
    frac = _gradient_nonzero_fraction(model, x, y)
    if frac is None:  # nothing to differentiate: every gradient attack would crash inside autograd
        reason = (f"the loss under {threat_model!r} does not depend on the input at all (no gradient path: the "
                  "purifier's output is detached, e.g. .detach(), numpy or torch.no_grad() inside forward)")
        fix = "declare `differentiable = False` so the harness attacks it with BPDA, or pass threat_model='bpda'"
        for check in ("eps_zero_is_clean", "gradients_nonzero", "monotone_in_eps", "large_eps_to_chance",
                      "more_steps_not_better", "pgd_not_weaker_than_fgsm", "noise_weaker_than_attack",
                      "whitebox_not_above_transfer", "eot_converged"):
            if check == "gradients_nonzero":
                add(check, False, f"no gradient: {reason}", f"a zero-gradient defense cannot be evaluated by "
                    f"gradient attacks as it stands: {fix}")
            else:
                add(check, None, "not run: the attacked model has no gradient path to the input", "skipped")
        add("randomness_declared", *declared)
        return pd.DataFrame(rows)

    # ε = 0: run the attack for real (no shortcut), the images must come back unchanged in effect
    reseed(purifier, seed)
    zero = run_attack(build_attack("pgd", model, eps=0.0, steps=2, step_size=0.0, n_classes=num_classes), x, y, seed)
    acc0 = float(score(purifier, classifier, zero, y, defense_runs if random else 1, seed)["worst"].float().mean())
    add("eps_zero_is_clean", acc0 == clean, f"ε=0: {acc0:.3f}, clean: {clean:.3f}", "attack at ε=0 is a no-op")

    add("gradients_nonzero", frac >= 0.9, f"{frac:.0%} of images have a non-zero gradient",
        "zero gradients mean the attack cannot move (shattered or masked gradients)")

    grid = [e for e in (eps / 4, eps / 2, eps, 2 * eps) if e <= 1]
    curve = [clean] + [acc("pgd", e) for e in grid]
    rising = max(b - a for a, b in zip(curve, curve[1:]))
    add("monotone_in_eps", rising <= tol,
        "ε·255 " + ", ".join(f"{e * 255:.1f}: {a:.3f}" for e, a in zip([0] + grid, curve)),
        "accuracy must not rise with the budget")

    # no random start here: at ε = 1 a random start alone scrambles the image and would hide masking
    big = acc("bim", 1.0, s=max(steps, 10), step_size=0.1)
    add("large_eps_to_chance", big <= chance + tol, f"ε=1: {big:.3f} (chance {chance:.3f})",
        "an unbounded attack must reach chance; if not, gradients are masked")

    at_eps = curve[grid.index(eps) + 1]
    more = acc("pgd", eps, s=4 * steps)
    add("more_steps_not_better", more <= at_eps + tol, f"{steps} steps: {at_eps:.3f}, {4 * steps} steps: {more:.3f}",
        "more iterations must not help the defense")

    fgsm = acc("fgsm", eps)
    add("pgd_not_weaker_than_fgsm", at_eps <= fgsm + tol, f"PGD: {at_eps:.3f}, FGSM: {fgsm:.3f}",
        "an iterative attack must be at least as strong as one step")

    gen = torch.Generator(device=x.device).manual_seed(seed)
    noise = (x + eps * torch.sign(torch.rand(x.shape, generator=gen, device=x.device) - 0.5)).clamp(0, 1)
    noisy = float(score(purifier, classifier, noise, y, defense_runs if random else 1, seed)["worst"].float().mean())
    noise_drop, attack_drop = clean - noisy, clean - at_eps
    add("noise_weaker_than_attack", noise_drop <= max(0.5 * attack_drop, tol),
        f"noise: {noisy:.3f}, attack: {at_eps:.3f}, clean: {clean:.3f}",
        "random noise of the same ε must hurt far less than the attack")

    if surrogate is not None:
        transfer = acc("pgd", eps, threat_model="transfer", surrogate=surrogate)
        add("whitebox_not_above_transfer", at_eps <= transfer + tol, f"{threat_model}: {at_eps:.3f}, "
            f"transfer: {transfer:.3f}", "an attacker with gradients must do at least as well as a transfer attack")
    else:
        add("whitebox_not_above_transfer", None, "no surrogate given", "skipped")

    if random:
        base = threat_model.split("+")[0]
        accuracies = [acc("pgd", eps, threat_model=f"{base}+eot" if k > 1 else base, eot_samples=k) for k in eot_curve]
        add("eot_converged", accuracies[-2] - accuracies[-1] <= max(tol, 0.02),
            f"EOT {'/'.join(map(str, eot_curve))}: " + ", ".join(f"{a:.3f}" for a in accuracies),
            "accuracy must stop falling as EOT samples grow")
    else:
        add("eot_converged", None, "deterministic defense", "skipped")
    add("randomness_declared", *declared)
    return pd.DataFrame(rows)


def all_passed(table: pd.DataFrame) -> bool:
    """True when no check failed (skipped checks do not count)."""
    return not (table["passed"] == False).any()  # noqa: E712  (None means skipped)
