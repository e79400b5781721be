"""Attack registry: every attack the five papers use, by name, built from torchattacks where it has it.

    attack = build_attack("pgd", model, eps=8/255, steps=20)      # step size 2/255 by default
    x_adv = run_attack(attack, x, y, seed=0)

Budgets are L∞ in pixel units (8/255) unless the name says otherwise (`pgd_l2`, `cw`, `deepfool` are
L2 attacks; their L2 result is additionally projected onto the L∞ ball of `eps` when one is given, so that
every row at a given ε is comparable, and the row records it).

What we configure or wrap around torchattacks 3.5.1, and why:
- `pgd`, `bim`: torchattacks returns the *last* iterate; ours return, per image, the first iterate that was
  misclassified during the run (no extra forward passes), so a late step cannot undo a success.
- `autoattack`: torchattacks' AutoAttack builds APGD, APGD-T and FAB with their 10-iteration defaults;
  ours follows the official protocol (Croce & Hein 2020): APGD-CE 100 iterations, APGD-T 100 iterations
  with 9 target classes, FAB-T 100 iterations, Square 5000 queries; `autoattack_rand` is the official
  version for randomised defenses: APGD-CE and APGD-DLR, 100 iterations, EOT over 20 draws.
- torchattacks' MultiAttack/AutoAttack judge success from one forward pass, which flatters a random
  defense (one lucky draw counts as robust). Ours judges an image robust only if it is classified
  correctly in every one of `checks` forward passes.
- `feature_distortion` (ours; no torchattacks equivalent): the label-free self-supervised attack of NRP
  (Naseer et al. 2020) and RDP, which pushes a fixed feature network's features of x' away from those of x.
  Built by name it distorts the given model's outputs; `feature_distortion(feature_net, x, ...)` is the
  direct call for training purifiers (see `FeatureDistortion`).
- `vnifgsm`, `sinifgsm`: torchattacks evaluates the model at points outside [0, 1] (VNI's random neighbours,
  the Nesterov look-ahead); ours clamp those points (`InRange`), so a purifier that checks its input works.
  `difgsm`, `mdfgsm`, `tifgsm` too: the input diversity's bilinear resize can land a rounding error outside
  [0, 1], which a range-checking purifier (NRP) refuses; the clamp changes nothing else.
- `cw`, `deepfool` at eps = 0 return the input unchanged (the projection onto the ε-ball is always applied,
  and at ε = 0 the inner attack is not run), and so does `pgd_l2` (torchattacks' PGDL2 divides 0 by 0 there
  and returns NaN images): ε = 0 means "no perturbation" for every attack here.
- Train/eval mode: torchattacks puts only the *top* module in eval mode and, when that module was in training
  mode, calls `.train()` on it afterwards, which recurses into every child. A fresh wrapper (`InRange`,
  `Defended`, `BPDA`, `EOT`) is in training mode by default, so the classifier inside came back in training
  mode and the next forward pass updated its batch-norm statistics. `run_attack` therefore records the mode of
  every module the attack sees, runs the attack with all of them in eval mode, and restores exactly the
  recorded modes afterwards (also when the attack raises); the wrappers also copy their inner model's mode.
- Inputs are checked before any work: `build_attack` rejects a non-integer or < 1 `steps` (ε = 0 is the one way
  to say "no attack"), a bad ε or step size, `checks` < 1; `run_attack` rejects images that are not float NCHW
  in [0, 1] (0-255 data, NaN) and labels that are not 1-D integer class indices, one per image, in
  [0, n_classes) (the upper bound when `n_classes` was given to `build_attack`).
- APGD reseeds torch's *global* RNG on every call. `run_attack` runs each attack inside
  `torch.random.fork_rng`, seeded from the row's seed, so the caller's RNG state is restored afterwards;
  random defenses draw from their own generators (lib.core.purifiers) and are unaffected either way.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torchattacks
from torchattacks.attack import Attack

from lib.attacks.feature_distortion import FeatureDistortion
from lib.attacks.pgd import default_step_size, pgd_linf
from lib.core.dry_run import cap_draws, cap_queries, cap_steps
from lib.core.estimate import collect, part, take_pending, timed
from lib.core.settings import check_count, check_eps, check_images, check_labels, check_radius

L2_ATTACKS = ("pgd_l2", "cw", "deepfool")


class BestIteratePGD(torchattacks.PGD):
    """L∞ PGD (Madry et al. 2018) that keeps, per image, the first misclassified iterate.

    Same arguments and defaults as torchattacks.PGD. Shapes: images (N, C, H, W) in [0, 1], labels (N,).
    """

    def forward(self, images, labels):
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        goal = self.get_target_label(images, labels) if self.targeted else labels
        return pgd_linf(self.get_logits, images, goal, eps=self.eps, steps=self.steps, step_size=self.alpha,
                        random_start=self.random_start, keep="first_success", targeted=self.targeted)


def _correct_every_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, checks: int) -> torch.Tensor:
    """True where the model classifies x correctly in each of `checks` forward passes."""
    ok = torch.ones(len(y), dtype=torch.bool, device=y.device)
    with torch.no_grad():
        for _ in range(checks):
            ok &= model(x).argmax(1) == y
    return ok


class SequentialWorstCase(Attack):
    """Run attacks one after another on the images still robust (AutoAttack's scheme).

    An image counts as robust only when it is classified correctly in each of `checks` forward passes,
    so a random defense is not credited for one lucky draw. Returns, per image, the first successful
    adversarial example (or the last attack's output where none succeeded).
    """

    def __init__(self, model, attacks: list[Attack], checks: int = 1):
        super().__init__("SequentialWorstCase", model)
        self.attacks = attacks
        self.checks = checks
        self.supported_mode = ["default"]

    def forward(self, images, labels):
        images, labels = images.clone().detach().to(self.device), labels.clone().detach().to(self.device)
        adv = images.clone()
        robust = _correct_every_time(self.model, images, labels, self.checks)
        for attack in self.attacks:
            idx = robust.nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                break
            with part(getattr(attack, "estimate_ratios", None)):  # a cost estimate scales each part apart
                candidate = attack(images[idx], labels[idx])
            adv[idx] = candidate
            robust[idx] = _correct_every_time(self.model, candidate, labels[idx], self.checks)
        return adv


def _autoattack(model, eps, n_classes, seed, checks, version):
    # the protocol's fixed iterations; a dry run (lib.core.dry_run) caps them like every other attack's
    with collect() as apgd_cut:  # what the caps cut from each part, for a cost estimate (lib.core.estimate)
        steps = cap_steps(100)
    with collect() as square_cut:
        queries = cap_queries(5000)
    with collect() as eot_cut:
        draws = cap_draws(20) if version != "standard" else 20
    if version == "standard":
        parts = [
            torchattacks.APGD(model, eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed),
            torchattacks.APGDT(model, eps=eps, steps=steps, n_restarts=1, n_classes=n_classes, seed=seed),
            torchattacks.FAB(model, eps=eps, steps=steps, n_restarts=1, multi_targeted=True, n_classes=n_classes,
                             seed=seed),
            torchattacks.Square(model, eps=eps, n_queries=queries, n_restarts=1, seed=seed),
        ]
        cuts = [apgd_cut] * 3 + [square_cut]
    else:  # "rand": for randomised defenses, EOT over 20 draws inside APGD
        parts = [
            torchattacks.APGD(model, eps=eps, steps=steps, n_restarts=1, loss="ce", eot_iter=draws, seed=seed),
            torchattacks.APGD(model, eps=eps, steps=steps, n_restarts=1, loss="dlr", eot_iter=draws, seed=seed),
        ]
        cuts = [{**apgd_cut, **eot_cut}] * 2
    for attack, cut in zip(parts, cuts):
        attack.estimate_ratios = cut
    return SequentialWorstCase(model, parts, checks=checks)


class InRange(nn.Module):
    """model(x) evaluated at x clamped to [0, 1], with the gradient passed straight through the clamp.

    VNI-FGSM's neighbours (x′ + U(−1.5ε, 1.5ε)) and the Nesterov look-ahead of VNI-/SINI-FGSM are fed to the
    model unclamped in torchattacks; a purifier (rightly) refuses images outside [0, 1]. The attack's own
    iterates stay in range; only these auxiliary gradient points are projected.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.training = model.training  # a fresh module is in training mode; torchattacks reads this flag

    def forward(self, x):
        return self.model(x + (x.clamp(0, 1) - x).detach())


class ProjectLinf(Attack):
    """Project another attack's output onto the L∞ ball of radius eps around the input (eps = 0: the input)."""

    def __init__(self, attack: Attack, eps: float):
        super().__init__("Project" + attack.attack, attack.model)
        self.inner, self.eps = attack, eps
        self.supported_mode = list(attack.supported_mode)

    def forward(self, images, labels):
        if self.eps == 0:  # nothing may move: do not run the inner attack at all
            return images.clone().detach()
        adv = self.inner(images, labels)
        return (images + (adv - images).clamp(-self.eps, self.eps)).clamp(0, 1)


class NoPerturbation(Attack):
    """The attack with a zero budget: returns its input (pgd_l2 at eps = 0)."""

    def __init__(self, model, eps: float = 0.0, alpha: float = 0.0):
        super().__init__("NoPerturbation", model)
        self.eps, self.alpha = eps, alpha
        self.supported_mode = ["default", "targeted"]

    def forward(self, images, labels):
        return images.clone().detach()


# name -> builder(model, eps, steps, step_size, n_classes, seed, checks); paper defaults in comments
_BUILDERS: dict[str, Callable[..., Attack]] = {
    "fgsm": lambda m, e, n, a, c, s, k: torchattacks.FGSM(m, eps=e),  # Goodfellow et al. 2015
    "bim": lambda m, e, n, a, c, s, k: BestIteratePGD(m, eps=e, alpha=a, steps=n, random_start=False),  # I-FGSM
    "pgd": lambda m, e, n, a, c, s, k: BestIteratePGD(m, eps=e, alpha=a, steps=n, random_start=True),
    "pgd_l2": lambda m, e, n, a, c, s, k: torchattacks.PGDL2(m, eps=e, alpha=a, steps=n),
    "cw": lambda m, e, n, a, c, s, k: torchattacks.CW(m, c=1, kappa=0, steps=n, lr=0.01),  # Carlini & Wagner 2017
    "deepfool": lambda m, e, n, a, c, s, k: torchattacks.DeepFool(m, steps=n, overshoot=0.02),
    "mifgsm": lambda m, e, n, a, c, s, k: torchattacks.MIFGSM(m, eps=e, alpha=a, steps=n, decay=1.0),
    "difgsm": lambda m, e, n, a, c, s, k: torchattacks.DIFGSM(InRange(m), eps=e, alpha=a, steps=n, decay=0.0),
    "mdfgsm": lambda m, e, n, a, c, s, k: torchattacks.DIFGSM(InRange(m), eps=e, alpha=a, steps=n, decay=1.0),  # DI + MI
    "tifgsm": lambda m, e, n, a, c, s, k: torchattacks.TIFGSM(InRange(m), eps=e, alpha=a, steps=n, decay=0.0),
    "vnifgsm": lambda m, e, n, a, c, s, k: torchattacks.VNIFGSM(InRange(m), eps=e, alpha=a, steps=n),
    "sinifgsm": lambda m, e, n, a, c, s, k: torchattacks.SINIFGSM(InRange(m), eps=e, alpha=a, steps=n),
    "apgd_ce": lambda m, e, n, a, c, s, k: torchattacks.APGD(m, eps=e, steps=n, loss="ce", seed=s),
    "apgd_dlr": lambda m, e, n, a, c, s, k: torchattacks.APGD(m, eps=e, steps=n, loss="dlr", seed=s),
    "autoattack": lambda m, e, n, a, c, s, k: _autoattack(m, e, c, s, k, "standard"),
    "autoattack_rand": lambda m, e, n, a, c, s, k: _autoattack(m, e, c, s, k, "rand"),
}
ATTACKS = tuple(_BUILDERS)
# attacks whose number of iterations is fixed by their protocol, not by `steps`
FIXED_STEPS = {"fgsm": 1, "autoattack": 100, "autoattack_rand": 100}


def check_budget(name: str, eps: float, step_size: float | None = None) -> tuple[float, float | None]:
    """ε and step size for an attack: L2 radii (any finite value ≥ 0) for `pgd_l2`, L∞ budgets in [0, 1] otherwise."""
    check = check_radius if name == "pgd_l2" else check_eps
    return check(eps, "eps"), None if step_size is None else check(step_size, "step_size")


# The DLR loss (Croce & Hein 2020) compares the true logit with the largest and the third-largest ones (untargeted)
# or with the target's and the fourth-largest (APGD-T inside AutoAttack): fewer classes than that and torchattacks
# indexes past the logits, after minutes of work.
MIN_CLASSES = {"apgd_dlr": 3, "autoattack_rand": 3, "autoattack": 4}


def supports(name: str, n_classes: int) -> bool:
    """Whether attack `name` can run against a classifier with `n_classes` outputs (see MIN_CLASSES)."""
    return n_classes >= MIN_CLASSES.get(name, 2)


STEPS_HINT = ("steps counts attack iterations: use an int ≥ 1 such as 20 (the papers' PGD-20); "
              "to evaluate without an attack use eps=0.")


def build_attack(name: str, model: nn.Module, eps: float = 8 / 255, steps: int = 20,
                 step_size: float | None = None, *, n_classes: int | None = None, seed: int = 0, checks: int = 1,
                 target: str | None = None) -> Attack:
    """An attack by name against `model` (a classifier, or a defended model; see lib.attacks.threat_models).

    eps: L∞ budget in pixel units (L2 radius for pgd_l2); 0 means no perturbation (every attack then returns
    its input). steps: iterations, an int ≥ 1 (ignored by the attacks in FIXED_STEPS, but still checked);
    step_size defaults to `default_step_size`. n_classes: the class count of the target-class attacks
    (APGD-T, FAB-T; default 10) and the upper bound `run_attack` checks labels against when given. checks:
    forward passes an AutoAttack-style attack uses to decide robustness (>1 for random defenses). target:
    None (untargeted), 'random' or 'least_likely'.
    """
    if name not in _BUILDERS:
        raise ValueError(f"Unknown attack {name!r}: choose one of {list(ATTACKS)}.")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (a classifier or a defended model); got {type(model).__name__}.")
    eps, step_size = check_budget(name, eps, step_size)
    steps = check_count(steps, "steps", 1, STEPS_HINT)
    checks = check_count(checks, "checks", 1, "checks counts forward passes per robustness decision (1, or the "
                                              "EOT sample count for a random defense).")
    if n_classes is not None:
        n_classes = check_count(n_classes, "n_classes", 2, "n_classes is the classifier's number of classes.")
        if not supports(name, n_classes):
            raise ValueError(f"{name} needs a classifier with at least {MIN_CLASSES[name]} classes (its DLR loss "
                             f"compares that many logits); this one has {n_classes}. Leave it out "
                             "(lib.attacks.registry.supports) or use pgd / apgd_ce.")
    if target not in (None, "random", "least_likely"):
        raise ValueError(f"Unknown target mode {target!r}: use None, 'random' or 'least_likely'.")
    if name not in FIXED_STEPS:  # a dry run (lib.core.dry_run) runs every path with few steps (fixed ones: their own)
        steps = cap_steps(steps)
    step_size = default_step_size(eps, steps) if step_size is None else step_size
    attack = _BUILDERS[name](model, eps, steps, step_size, n_classes or 10, seed, checks)
    if name in ("cw", "deepfool"):
        attack = ProjectLinf(attack, eps)
    elif name == "pgd_l2" and eps == 0:
        attack = NoPerturbation(model, eps, step_size)
    for part in (attack, attack.inner) if isinstance(attack, ProjectLinf) else (attack,):
        if target == "random":
            part.set_mode_targeted_random(quiet=True)
        elif target == "least_likely":
            part.set_mode_targeted_least_likely(quiet=True)
    attack.label_classes = n_classes  # run_attack checks labels against it
    attack.estimate_ratios = take_pending()  # what a dry run's caps cut from it (lib.core.estimate)
    return attack


def _attacked_models(attack: Attack) -> list[nn.Module]:
    """The models an attack (and the attacks nested in it: ProjectLinf's inner, SequentialWorstCase's parts) runs."""
    models: dict[int, nn.Module] = {}
    stack = [attack]
    while stack:
        a = stack.pop()
        if isinstance(getattr(a, "model", None), nn.Module):
            models.setdefault(id(a.model), a.model)
        stack += [a.inner] if isinstance(getattr(a, "inner", None), Attack) else []
        stack += [b for b in getattr(a, "attacks", None) or [] if isinstance(b, Attack)]
    return list(models.values())


def run_attack(attack: Attack, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Run an attack with its own seeded RNG stream, leaving the caller's global RNG state untouched.

    Checks x (float NCHW in [0, 1]) and y (1-D integer class indices, one per image) first. Every module of
    the attacked model runs in eval mode (batch norm uses its running statistics and is never updated);
    afterwards each module's train/eval mode is restored exactly as it was, also when the attack raises.
    """
    if not isinstance(attack, Attack):
        raise TypeError(f"attack must be a torchattacks Attack (from build_attack); got {type(attack).__name__}.")
    check_images(x, "x")
    check_labels(y, len(x), getattr(attack, "label_classes", None), "y")
    if not len(x):
        return x.detach().clone()
    models = _attacked_models(attack)
    modules = list({id(m): m for model in models for m in model.modules()}.values())
    modes = [m.training for m in modules]
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        for model in models:
            model.eval()  # through .eval(), so a module's own train() override (a fixed network) still applies
        with torch.random.fork_rng(devices=devices), timed("attack", getattr(attack, "estimate_ratios", None),
                                                           attack=type(attack).__name__):
            torch.manual_seed(seed)
            return attack(x, y).detach()
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


# registered by name: with a classifier (or a defended model) as the "feature network" it distorts logits
_BUILDERS["feature_distortion"] = lambda m, e, n, a, c, s, k: FeatureDistortion(m, eps=e, alpha=a, steps=n)
ATTACKS = tuple(_BUILDERS)
