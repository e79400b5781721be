"""One function evaluates (purifier, classifier, attack, threat model) on images and returns a result row.

    row = evaluate(purifier, target, x, y, attack="pgd", threat_model="bpda+eot", eps=8/255,
                   defense="jpeg75", classifier="natural", dataset="shapes10")

The attack sees the model that the threat model names (lib.attacks.threat_models); the adversarial images are
then scored by classifier ∘ purifier. A random purifier is scored over `defense_runs` independent runs:
`accuracy` is the worst case (an image counts only if it is classified correctly in every run), with the
mean over runs and the majority vote as extra columns (Croce et al. 2022).

Every argument is checked before any work starts (clear errors naming the argument and the fix): images float
NCHW in [0, 1], non-empty, no NaN, with the classifier's channel count; labels 1-D integer class indices, one
per image, in [0, n_classes); ε a budget in [0, 1] (an L2 radius for pgd_l2); steps, eot_samples,
defense_runs and batch_size ints ≥ 1. ε = 0 is the one way to ask for "no attack".
"""
from __future__ import annotations

import time

import torch
from torch import nn

from lib.attacks.registry import ATTACKS, FIXED_STEPS, STEPS_HINT, build_attack, check_budget, run_attack
from lib.core.estimate import full_value, timed
from lib.core.purifiers import Defended, Identity, is_randomized, reseed
from lib.core.results import result_row
from lib.core.settings import check_count, check_images, check_labels
from lib.attacks.threat_models import attacked_model, parse_threat_model

RUNS_HINT = "defense_runs counts independent runs of a random defense at scoring: 1, or e.g. 3 for a random one."
EOT_HINT = "eot_samples counts draws of the defense per gradient: 1 for a deterministic defense, e.g. 10 for a random one."


def check_inputs(target: nn.Module, x: torch.Tensor, y: torch.Tensor, n_classes: int | None = None) -> int:
    """Check images and labels against the classifier before any work; returns the class count.

    One forward pass of the classifier on the first image gives n_classes (when not given) and runs the
    classifier's own input check (channels, range).
    """
    check_images(x, "x", nonempty=True)
    if not torch.is_tensor(y):
        raise TypeError(f"y must be an integer tensor of class indices (torch.long); got {type(y).__name__}.")
    check_labels(y, len(x), None, "y")
    if n_classes is None:
        with torch.no_grad():
            n_classes = target(x[:1]).shape[1]
    n_classes = check_count(n_classes, "n_classes", 2, "n_classes is the classifier's number of classes.")
    check_labels(y, len(x), n_classes, "y")
    return n_classes


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([model(part).argmax(1) for part in x.split(batch_size)])


def score(purifier: nn.Module, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, runs: int = 1,
          seed: int = 0) -> dict:
    """Correctness of classifier ∘ purifier on x over `runs` draws of the defense's randomness."""
    runs = check_count(runs, "defense_runs", 1, RUNS_HINT)
    defended = Defended(purifier, classifier).eval()
    runs = runs if is_randomized(purifier) else 1
    correct = []
    with timed("predict", {"runs": full_value("defense_runs", runs) / runs} if runs > 1 else None, what="score"):
        for r in range(runs):
            reseed(purifier, seed * 1000 + r)
            correct.append(predictions(defended, x) == y)
    correct = torch.stack(correct)  # (runs, N)
    return {"worst": correct.all(0), "mean": correct.float().mean(0), "majority": correct.float().mean(0) > 0.5,
            "runs": runs}


def evaluate(purifier: nn.Module | None, target: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             attack: str = "pgd", threat_model: str = "white-box", eps: float = 8 / 255, steps: int = 20,
             step_size: float | None = None, surrogate: nn.Module | None = None, eot_samples: int = 1,
             defense_runs: int = 1, seed: int = 0, batch_size: int = 256, n_classes: int | None = None,
             defense: str = "none", classifier: str = "classifier", dataset: str = "unknown",
             return_adversarial: bool = False, **extra):
    """Attack `target` ∘ `purifier`; returns a result row (and the adversarial images when asked).

    defense / classifier / dataset are the names written into the row. Arguments are checked first (see the
    module docstring); the purifier and target are left in eval mode.
    """
    if attack not in ATTACKS:
        raise ValueError(f"Unknown attack {attack!r}: choose one of {list(ATTACKS)}.")
    parse_threat_model(threat_model)
    eps, step_size = check_budget(attack, eps, step_size)
    steps = check_count(steps, "steps", 1, STEPS_HINT)
    eot_samples = check_count(eot_samples, "eot_samples", 1, EOT_HINT)
    defense_runs = check_count(defense_runs, "defense_runs", 1, RUNS_HINT)
    batch_size = check_count(batch_size, "batch_size", 1, "batch_size is the number of images attacked at once, e.g. 256.")
    purifier = (purifier or Identity()).eval()
    target = target.eval()
    n_classes = check_inputs(target, x, y, n_classes)
    model = attacked_model(threat_model, purifier, target, surrogate, eot_samples)
    checks = max(eot_samples, 1) if is_randomized(purifier) else 1
    atk = build_attack(attack, model, eps, steps, step_size, n_classes=n_classes, seed=seed, checks=checks)

    start = time.perf_counter()
    reseed(purifier, seed)
    if eps == 0:
        adversarial = x.clone()
    else:
        adversarial = torch.cat([run_attack(atk, xb, yb, seed + i)
                                 for i, (xb, yb) in enumerate(zip(x.split(batch_size), y.split(batch_size)))])
    scored = score(purifier, target, adversarial, y, defense_runs, seed)
    seconds = time.perf_counter() - start

    steps_used = FIXED_STEPS.get(attack, steps)
    row = result_row(defense=defense, classifier=classifier, dataset=dataset, threat_model=threat_model,
                     attack=attack, eps=eps, steps=steps_used, step_size=float(getattr(atk, "alpha", eps if attack == "fgsm" else float("nan"))),
                     correct=int(scored["worst"].sum()), n=len(y), seed=seed, seconds=seconds,
                     accuracy_mean_run=float(scored["mean"].mean()),
                     accuracy_majority=float(scored["majority"].float().mean()), defense_runs=scored["runs"],
                     eot_samples=eot_samples if "eot" in threat_model else 1, **extra)
    return (row, adversarial) if return_adversarial else row


def evaluate_oblivious(purifiers: dict[str, nn.Module | None], target: nn.Module, x: torch.Tensor,
                       y: torch.Tensor, *, attack: str = "pgd", threat_model: str = "oblivious", eps: float = 8 / 255,
                       steps: int = 20, step_size: float | None = None, surrogate: nn.Module | None = None,
                       defense_runs: int = 1, seed: int = 0, batch_size: int = 256, classifier: str = "classifier",
                       dataset: str = "unknown", **extra) -> list[dict]:
    """One row per named purifier under an attack that does not see the purifier (oblivious or transfer).

    The adversarial images do not depend on the purifier, so they are computed once and scored through
    each defense; every row is the one `evaluate` would give (its `seconds` include the shared attack).
    A value may also be `(purifier, classifier, classifier_name)`: a defense that changes the classifier
    behind its purifier (IDFR's feature restorer, an adversarially trained target), scored with that
    classifier on the same images; the attack saw neither (it was crafted on `target`, or on `surrogate`).
    """
    defense_runs = check_count(defense_runs, "defense_runs", 1, RUNS_HINT)
    if parse_threat_model(threat_model)[0] not in ("oblivious", "transfer"):
        raise ValueError(f"evaluate_oblivious is for the 'oblivious' and 'transfer' threat models (the attack does "
                         f"not see the purifier); got {threat_model!r}: call evaluate() for each purifier instead.")
    start = time.perf_counter()
    first_row, adversarial = evaluate(None, target, x, y, attack=attack, threat_model=threat_model, eps=eps,
                                      steps=steps, step_size=step_size, surrogate=surrogate, seed=seed,
                                      batch_size=batch_size, return_adversarial=True)
    attack_seconds = time.perf_counter() - start
    rows = []
    for name, defense in purifiers.items():
        begin = time.perf_counter()
        purifier, model, model_name = defense if isinstance(defense, tuple) else (defense, target, classifier)
        purifier = (purifier or Identity()).eval()
        scored = score(purifier, model.eval(), adversarial, y, defense_runs, seed)
        rows.append(result_row(
            defense=name, classifier=model_name, dataset=dataset, threat_model=threat_model, attack=attack,
            eps=eps, steps=first_row["steps"], step_size=first_row["step_size"], correct=int(scored["worst"].sum()),
            n=len(y), seed=seed, seconds=attack_seconds + time.perf_counter() - begin,
            accuracy_mean_run=float(scored["mean"].mean()), accuracy_majority=float(scored["majority"].float().mean()),
            defense_runs=scored["runs"], eot_samples=1, **extra))
    return rows


def clean_row(purifier: nn.Module | None, target: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
              defense_runs: int = 1, seed: int = 0, defense: str = "none", classifier: str = "classifier",
              dataset: str = "unknown", **extra) -> dict:
    """The clean-accuracy row (attack 'none', ε = 0) of a defended model (inputs checked as in `evaluate`)."""
    defense_runs = check_count(defense_runs, "defense_runs", 1, RUNS_HINT)
    target = target.eval()
    check_inputs(target, x, y)
    start = time.perf_counter()
    purifier = (purifier or Identity()).eval()
    scored = score(purifier, target, x, y, defense_runs, seed)
    return result_row(defense=defense, classifier=classifier, dataset=dataset, threat_model="none",
                      attack="none", eps=0.0, steps=0, step_size=0.0, correct=int(scored["worst"].sum()), n=len(y),
                      seed=seed, seconds=time.perf_counter() - start,
                      accuracy_mean_run=float(scored["mean"].mean()),
                      accuracy_majority=float(scored["majority"].float().mean()), defense_runs=scored["runs"],
                      eot_samples=1, **extra)


def sweep(purifier: nn.Module | None, target: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
          attacks: list[str], eps_values: list[float], threat_model: str = "white-box", **kwargs) -> list[dict]:
    """Rows for every (attack, ε) pair; ε = 0 is scored without running the attack."""
    return [evaluate(purifier, target, x, y, attack=a, threat_model=threat_model, eps=e, **kwargs)
            for a in attacks for e in eps_values]
