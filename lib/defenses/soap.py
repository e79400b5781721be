"""SOAP: online adversarial purification with a self-supervised auxiliary loss (IDFR's "SOAP").

Paper: Shi, Holtz, Mishne, "Online Adversarial Purification based on Self-Supervised Learning", ICLR 2021
(public code: Mishne-Lab/SOAP). The classifier is trained jointly with an auxiliary self-supervised loss;
at test time an input is purified by minimising that auxiliary loss over a small L∞ ball around it (no
label is needed), on the premise that an adversarial perturbation raises the auxiliary loss and undoing
the rise undoes the attack.

| paper | here |
|---|---|
| joint training: CE + α·aux (Eq. 2) | `SOAPTrainer` (lib's SGD one-cycle classifier recipe, plus the aux term) |
| label consistency (LC) aux loss: two augmentations must give the same logits | `consistency_loss` |
| the augmentations (noise, flip, crop-and-resize); the deterministic test-time pair | `random_view`, `fixed_view` |
| purification: minimise aux over radii e·δ, e = 0…10, keep each image's lowest-aux radius | `SOAP.forward` |

Our choices and deviations, and why:
- Of SOAP's three auxiliary tasks (data reconstruction, rotation prediction, label consistency) we build LC:
  it needs no extra head, so the classifier keeps lib's architecture, and it is the variant the authors'
  code and follow-ups report best on CIFAR-10. Rotation prediction would be a poor task on the embedded
  data, whose shapes are drawn at random rotations.
- Views (the released code's augmentations, made per image): Gaussian noise σ 0.1 then clamp, a random flip,
  a random crop of 3/4 to the full side resized back. The test-time pair is (x, flipped centre crop of
  7/8 of the side), as the released code's deterministic transform.
- Purification is PGD on the aux loss (sign steps of `step_size`, `purify_steps` of them, from x, no random
  start) inside each radius e·`delta`, e = 0, …, `radii` − 1; the radius whose result has the lowest aux loss
  is kept per image (e = 0 returns x itself). The paper's δ = 4/255 and 11 radii at paper scale; fewer at
  quick for the CPU budget.
- `differentiable = False`: the output is an argmin over inner optimisations (gradients of gradients); the
  `bpda` threat model attacks it with the identity surrogate. Deterministic.
- SOAP replaces the target: its classifier is trained here (same architecture as the target) and is what
  the purified image is fed to, so SOAP comes as (purifier, classifier); the purifier holds that classifier.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib.attacks.pgd import pgd_linf
from lib.core.data import ImageData
from lib.core.fit import epoch_batches, fit
from lib.core.purifiers import Purifier
from lib.core.settings import check_eps, check_images
from lib.models.recipes import ClassifierTrainer, Recipe, accuracy


@dataclass(frozen=True)
class SOAPSettings:
    """Joint training and test-time purification of SOAP-LC at one scale (units in comments)."""

    aux_weight: float = 1.0  # α of the joint loss CE + α·LC
    view_noise: float = 0.1  # σ of the views' Gaussian noise, pixel units
    delta: float = 4 / 255  # radius increment of the purification
    radii: int = 11  # radii e·delta, e = 0 … radii − 1
    purify_steps: int = 5  # sign steps of the aux loss inside each radius
    step_size: float = 4 / 255
    n_train: int = 50_000  # the classifier's training set and epochs (those of the scale's natural classifier)
    epochs: int = 100

    def __post_init__(self):
        check_eps(self.delta, "delta")
        check_eps(self.step_size, "step_size")
        if self.radii < 1 or self.purify_steps < 1:
            raise ValueError(f"radii={self.radii} and purify_steps={self.purify_steps} must be at least 1.")


SETTINGS = {
    "smoke": SOAPSettings(radii=2, purify_steps=1, n_train=512, epochs=1),
    "quick": SOAPSettings(radii=5, purify_steps=3, n_train=10_000, epochs=6),
    "paper": SOAPSettings(),
}


def _crop_resize(x: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.interpolate(x[..., top:top + size, left:left + size], size=(h, w), mode="bilinear", align_corners=False)


def fixed_view(x: torch.Tensor) -> torch.Tensor:
    """The deterministic test-time view: horizontally flipped, centre crop of 7/8 of the side, resized back."""
    side = min(x.shape[-2:])
    margin = max(side // 16, 1)
    return _crop_resize(x.flip(-1), margin, margin, side - 2 * margin)


def random_view(x: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """A training view of each image: Gaussian noise then clamp, a random flip, a random crop of 3/4 to the full
    side resized back (each image its own draw)."""
    n, side = len(x), min(x.shape[-2:])
    device = x.device
    x = (x + noise * torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)).clamp(0, 1)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    views = []
    for image in x:
        size = int(torch.randint(3 * side // 4, side + 1, (1,), generator=generator, device=device))
        top, left = (int(v) for v in torch.randint(0, side - size + 1, (2,), generator=generator, device=device))
        views.append(_crop_resize(image[None], top, left, size))
    return torch.cat(views)


def consistency_loss(classifier: nn.Module, x: torch.Tensor, view: torch.Tensor | None = None) -> torch.Tensor:
    """LC, per image: mean square difference of the logits of x and of a second view of it (default the
    deterministic `fixed_view`). (N,) losses."""
    view = fixed_view(x) if view is None else view
    return (classifier(x) - classifier(view)).pow(2).mean(1)


class SOAP(Purifier):
    """Test-time purification by minimising LC within growing L∞ radii. (N, C, H, W) in [0, 1] -> same.

    `classifier` is SOAP's jointly trained classifier (kept in whatever mode it is given; use eval).
    """

    differentiable = False
    randomized = False

    def __init__(self, classifier: nn.Module, delta: float = 4 / 255, radii: int = 11, purify_steps: int = 5,
                 step_size: float = 4 / 255):
        super().__init__()
        self.classifier = classifier
        self.delta, self.radii, self.purify_steps, self.step_size = float(delta), int(radii), int(purify_steps), \
            float(step_size)

    def aux_loss(self, x: torch.Tensor) -> torch.Tensor:
        return consistency_loss(self.classifier, x)

    def _descend(self, x: torch.Tensor, radius: float) -> torch.Tensor:
        """PGD *down* the aux loss from x inside the L∞ ball of `radius` (lib's one PGD, targeted = descent)."""
        return pgd_linf(lambda h: h, x, None, eps=radius, steps=self.purify_steps, step_size=self.step_size,
                        loss=lambda h, _: self.aux_loss(h).sum(), random_start=False, targeted=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_images(x, "x").detach()
        best, best_loss = x, None
        with torch.enable_grad():
            for e in range(self.radii):
                candidate = x if e == 0 else self._descend(x, e * self.delta)
                with torch.no_grad():
                    loss = self.aux_loss(candidate)
                if best_loss is None:
                    best, best_loss = candidate, loss
                    continue
                better = loss < best_loss
                best = torch.where(better.view(-1, 1, 1, 1), candidate, best)
                best_loss = torch.minimum(loss, best_loss)
        return best


class SOAPTrainer(ClassifierTrainer):
    """lib's classifier recipe (SGD, one-cycle lr) on SOAP's joint loss: CE on two random views of each
    image plus α·LC between their logits."""

    def __init__(self, model: nn.Module, recipe: Recipe, settings: SOAPSettings, total_steps: int, seed: int = 0):
        if recipe.name != "natural":
            raise ValueError(f"SOAP trains on the natural recipe, got {recipe.name!r}.")
        super().__init__(model, recipe, total_steps, seed)
        self.settings, self.seed = settings, seed
        self.view_generator: torch.Generator | None = None  # on the batches' device, made at the first step

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        self.model.train()
        if self.view_generator is None:
            self.view_generator = torch.Generator(device=x.device).manual_seed(self.seed)
        v1, v2 = (random_view(x, self.settings.view_noise, self.view_generator) for _ in range(2))
        logits1, logits2 = self.model(v1), self.model(v2)
        ce = F.cross_entropy(torch.cat([logits1, logits2]), torch.cat([y, y]))
        lc = (logits1 - logits2).pow(2).mean()
        loss = ce + self.settings.aux_weight * lc
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "ce": ce.item(), "lc": lc.item(),
                "accuracy": (logits1.argmax(1) == y).float().mean().item()}


def train_soap_classifier(model: nn.Module, train: ImageData, test: ImageData, recipe: Recipe,
                          settings: SOAPSettings, *, device, seed: int = 0, progress: bool = True) -> dict:
    """Train SOAP's classifier in place on the joint loss; returns metrics (accuracies, final LC, seconds)."""
    start = time.perf_counter()
    model.to(device)
    batches = epoch_batches(train, recipe.batch_size, seed, device)
    trainer = SOAPTrainer(model, recipe, settings, recipe.epochs * batches.steps_per_epoch, seed)
    log = fit(trainer, batches, epochs=recipe.epochs, desc="train SOAP classifier", progress=progress,
              show=("ce", "lc", "accuracy"))
    model.eval()
    return {"train_accuracy": log.history["accuracy"][-1], "test_accuracy": accuracy(model, test, device),
            "epoch_ce": log.history["ce"], "epoch_lc": log.history["lc"], "train_seconds": time.perf_counter() - start}


def build_purifier(classifier: nn.Module, settings: SOAPSettings) -> SOAP:
    return SOAP(classifier, settings.delta, settings.radii, settings.purify_steps, settings.step_size)
