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
- APGD reseeds torch's *global* RNG on every call. `run_attack` runs each attack inside
  `torch.random.fork_rng`, seeded from the row's seed, so the caller's RNG state is restored afterwards;
  random defenses draw from their own generators (lib.purifiers) and are unaffected either way.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torchattacks
from torchattacks.attack import Attack

from lib.settings import check_eps, check_images

L2_ATTACKS = ("pgd_l2", "cw", "deepfool")


def default_step_size(eps: float, steps: int) -> float:
    """ε/4, or 2.5·ε/steps when that is larger (so few steps still reach the boundary); 2/255 at 8/255, 20 steps."""
    return min(eps, max(eps / 4, 2.5 * eps / max(steps, 1)))


class BestIteratePGD(torchattacks.PGD):
    """L∞ PGD (Madry et al. 2018) that keeps, per image, the first misclassified iterate.

    Same arguments and defaults as torchattacks.PGD. Shapes: images (N, C, H, W) in [0, 1], labels (N,).
    """

    def forward(self, images, labels):
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        target = self.get_target_label(images, labels) if self.targeted else None
        loss = nn.CrossEntropyLoss()
        adv = images.clone()
        if self.random_start:
            adv = (adv + torch.empty_like(adv).uniform_(-self.eps, self.eps)).clamp(0, 1)
        best = adv.clone()
        done = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            logits = self.get_logits(adv)
            with torch.no_grad():  # the logits of the current iterate tell us whether it already succeeds
                pred = logits.argmax(1)
                success = (pred == target) if self.targeted else (pred != labels)
                newly = success & ~done
                best[newly] = adv.detach()[newly]
                done |= success
            cost = -loss(logits, target) if self.targeted else loss(logits, labels)
            grad = torch.autograd.grad(cost, adv)[0]
            adv = adv.detach() + self.alpha * grad.sign()
            adv = (images + (adv - images).clamp(-self.eps, self.eps)).clamp(0, 1).detach()
        best[~done] = adv[~done]  # never-successful images: the final iterate
        return best


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
            candidate = attack(images[idx], labels[idx])
            adv[idx] = candidate
            robust[idx] = _correct_every_time(self.model, candidate, labels[idx], self.checks)
        return adv


def _autoattack(model, eps, n_classes, seed, checks, version):
    if version == "standard":
        parts = [
            torchattacks.APGD(model, eps=eps, steps=100, n_restarts=1, loss="ce", seed=seed),
            torchattacks.APGDT(model, eps=eps, steps=100, n_restarts=1, n_classes=n_classes, seed=seed),
            torchattacks.FAB(model, eps=eps, steps=100, n_restarts=1, multi_targeted=True, n_classes=n_classes,
                             seed=seed),
            torchattacks.Square(model, eps=eps, n_queries=5000, n_restarts=1, seed=seed),
        ]
    else:  # "rand": for randomised defenses, EOT over 20 draws inside APGD
        parts = [
            torchattacks.APGD(model, eps=eps, steps=100, n_restarts=1, loss="ce", eot_iter=20, seed=seed),
            torchattacks.APGD(model, eps=eps, steps=100, n_restarts=1, loss="dlr", eot_iter=20, seed=seed),
        ]
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

    def forward(self, x):
        return self.model(x + (x.clamp(0, 1) - x).detach())


class ProjectLinf(Attack):
    """Project another attack's output onto the L∞ ball of radius eps around the input."""

    def __init__(self, attack: Attack, eps: float):
        super().__init__("Project" + attack.attack, attack.model)
        self.inner, self.eps = attack, eps
        self.supported_mode = ["default"]

    def forward(self, images, labels):
        adv = self.inner(images, labels)
        return (images + (adv - images).clamp(-self.eps, self.eps)).clamp(0, 1)


# name -> builder(model, eps, steps, step_size, n_classes, seed, checks); paper defaults in comments
_BUILDERS: dict[str, Callable[..., Attack]] = {
    "fgsm": lambda m, e, n, a, c, s, k: torchattacks.FGSM(m, eps=e),  # Goodfellow et al. 2015
    "bim": lambda m, e, n, a, c, s, k: BestIteratePGD(m, eps=e, alpha=a, steps=n, random_start=False),  # I-FGSM
    "pgd": lambda m, e, n, a, c, s, k: BestIteratePGD(m, eps=e, alpha=a, steps=n, random_start=True),
    "pgd_l2": lambda m, e, n, a, c, s, k: torchattacks.PGDL2(m, eps=e, alpha=a, steps=n),
    "cw": lambda m, e, n, a, c, s, k: torchattacks.CW(m, c=1, kappa=0, steps=n, lr=0.01),  # Carlini & Wagner 2017
    "deepfool": lambda m, e, n, a, c, s, k: torchattacks.DeepFool(m, steps=n, overshoot=0.02),
    "mifgsm": lambda m, e, n, a, c, s, k: torchattacks.MIFGSM(m, eps=e, alpha=a, steps=n, decay=1.0),
    "difgsm": lambda m, e, n, a, c, s, k: torchattacks.DIFGSM(m, eps=e, alpha=a, steps=n, decay=0.0),
    "mdfgsm": lambda m, e, n, a, c, s, k: torchattacks.DIFGSM(m, eps=e, alpha=a, steps=n, decay=1.0),  # DI + MI
    "tifgsm": lambda m, e, n, a, c, s, k: torchattacks.TIFGSM(m, eps=e, alpha=a, steps=n, decay=0.0),
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


def build_attack(name: str, model: nn.Module, eps: float = 8 / 255, steps: int = 20,
                 step_size: float | None = None, *, n_classes: int = 10, seed: int = 0, checks: int = 1,
                 target: str | None = None) -> Attack:
    """An attack by name against `model` (a classifier, or a defended model; see lib.threat_models).

    eps: L∞ budget in pixel units (L2 radius for pgd_l2). steps/step_size: iterations and step (step size
    defaults to `default_step_size`). checks: forward passes an AutoAttack-style attack uses to decide
    robustness (>1 for random defenses). target: None (untargeted), 'random' or 'least_likely'.
    """
    if name not in _BUILDERS:
        raise ValueError(f"Unknown attack {name!r}: choose one of {list(ATTACKS)}.")
    if name != "pgd_l2":
        check_eps(eps)
    step_size = default_step_size(eps, steps) if step_size is None else check_eps(step_size, "step_size")
    attack = _BUILDERS[name](model, eps, steps, step_size, n_classes, seed, checks)
    if name in ("cw", "deepfool") and eps > 0:
        attack = ProjectLinf(attack, eps)
    if target == "random":
        attack.set_mode_targeted_random(quiet=True)
    elif target == "least_likely":
        attack.set_mode_targeted_least_likely(quiet=True)
    elif target is not None:
        raise ValueError(f"Unknown target mode {target!r}: use None, 'random' or 'least_likely'.")
    return attack


def run_attack(attack: Attack, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Run an attack with its own seeded RNG stream, leaving the caller's global RNG state untouched."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return attack(x, y).detach()


class FeatureDistortion(Attack):
    r"""Self-supervised feature-distortion attack: L∞ PGD that maximises ‖F(x') − F(x)‖² without labels.

    Naseer et al. 2020, "A Self-supervised Approach for Adversarial Robustness" (CVPR), Eq. 2, the
    self-supervised perturbation (SSP) that trains the NRP purifier; RDP (Eq. 1) uses the same attack.
    Δ is the mean squared difference of the feature maps (the authors' code: `nn.MSELoss` on VGG16
    `features[:16]`); each step is x' ← Π_{B∞(x, ε) ∩ [0,1]}(x' + α·sign ∇_{x'} Δ(F(x'), F(x))).

    Arguments: model: the fixed feature network F (any module mapping images to a tensor; a classifier
    distorts its logits). eps: L∞ budget (NRP: 16/255). alpha: step size (NRP's code: 0.01). steps: iterations
    (NRP's code: 100). random_start: start from x + U(−ε, ε) (NRP's code starts from N(0, 1) noise, which the
    first projection clips to the corners of the ball; a uniform start is the usual PGD choice and needs no
    special case). generator: a torch.Generator for the random start (default: torch's global RNG, which
    `run_attack` seeds). Labels are ignored.

    Shapes: images (N, C, H, W) in [0, 1] -> adversarial images (N, C, H, W) in [0, 1].
    """

    def __init__(self, model, eps: float = 16 / 255, alpha: float = 0.01, steps: int = 100,
                 random_start: bool = True, generator: torch.Generator | None = None):
        super().__init__("FeatureDistortion", model)
        self.eps, self.alpha, self.steps = check_eps(eps), check_eps(alpha, "alpha"), int(steps)
        if self.steps < 1:
            raise ValueError(f"FeatureDistortion needs at least one step; got steps={steps}.")
        self.random_start, self.generator = random_start, generator
        self.supported_mode = ["default"]

    def forward(self, images, labels=None):
        images = images.clone().detach()
        with torch.no_grad():
            clean_features = self.get_logits(images).detach()
        adv = images.clone()
        if self.random_start:
            noise = torch.rand(images.shape, generator=self.generator, device=images.device,
                               dtype=images.dtype) if self.generator is not None else torch.rand_like(images)
            adv = (adv + (2 * noise - 1) * self.eps).clamp(0, 1)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            distortion = (self.get_logits(adv) - clean_features).pow(2).mean()
            grad, = torch.autograd.grad(distortion, adv)
            adv = adv.detach() + self.alpha * grad.sign()
            adv = (images + (adv - images).clamp(-self.eps, self.eps)).clamp(0, 1).detach()
        return adv


def feature_distortion(feature_net: nn.Module, x: torch.Tensor, eps: float = 16 / 255, steps: int = 100,
                       step_size: float | None = None, seed: int | None = 0, *, random_start: bool = True,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial images x' in B∞(x, ε) that maximise ‖F(x') − F(x)‖² (see `FeatureDistortion`); no labels.

    step_size defaults to `default_step_size(eps, steps)`. The random start comes from `generator` when
    given (a training loop keeps one across batches), else from a generator seeded with `seed` on x's device.
    The feature network's train/eval mode is left as it was.
    """
    check_images(x, "x")
    check_eps(eps)
    step_size = default_step_size(eps, steps) if step_size is None else check_eps(step_size, "step_size")
    if generator is None and random_start:
        generator = torch.Generator(device=x.device).manual_seed(0 if seed is None else int(seed))
    attack = FeatureDistortion(feature_net, eps=eps, alpha=step_size, steps=steps, random_start=random_start,
                               generator=generator)
    return attack(x).detach()


# registered by name: with a classifier (or a defended model) as the "feature network" it distorts logits
_BUILDERS["feature_distortion"] = lambda m, e, n, a, c, s, k: FeatureDistortion(m, eps=e, alpha=a, steps=n)
ATTACKS = tuple(_BUILDERS)
