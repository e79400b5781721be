"""JATP: a pre-processing model trained on adversarial examples crafted against the whole defended system.

Paper: Zhou, Wang, Gao, Han, Yu, Wang, Liu, "Improving White-box Robustness of Pre-processing Defenses via
Joint Adversarial Training", 2021 (arXiv 2106.05453). No public code.

The paper's point: a pre-processing model trained on adversarial examples of the target alone makes the
white-box robustness of the defended system worse ("robustness degradation"), because the attacker then
differentiates through the pre-processor as well. JATP trains the pre-processor on *full* adversarial
examples, crafted against pre-processor + target, found in the target's feature space, with a feature
similarity based adversarial risk and a pixel-wise loss:
    x_fa = argmax_{‖x' − x‖∞ ≤ ε} ‖f(P(x')) − f(x)‖²      (lib.attacks.feature_distortion through P and f)
    L = ‖f(P(x_fa)) − f(x)‖₁ + λ_pix·‖P(x_fa) − x‖₁,
where f is the target's penultimate representation (`target.features`), fixed during training. The full
adversarial examples are re-crafted for every batch against the current P, so P and its attacker are
trained jointly (adversarial training of the pre-processor).

Our choices (the paper's details we could not recover are marked), and why:
- Pre-processor: a two-level U-Net that predicts a residual added to its input (the shape of HGD's DUNET,
  the denoiser JATP builds on), width 16 at `quick` scale, 64 at `paper`.
- The same loss is also applied to the clean image of each pair (clean images pass through P too, and the
  clean accuracy of the defended model depends on it); natural and full adversarial images share a batch.
- L1 distances and λ_pix = 1 (our choice; HGD's guided losses are L1).
- Attack: ε 8/255 with a random start; 2 steps of 4/255 at `quick` scale (the most expensive baseline to
  train: every step differentiates through P and the target), 5 steps of 2/255 at `paper` (DIR's setting
  for every baseline). Adam, lr 10⁻³.
- Differentiable and deterministic.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib.attacks.feature_distortion import feature_distortion
from lib.core.data import ImageData, augment_flip_crop
from lib.core.purifiers import Purifier
from lib.core.settings import check_eps, check_images
from lib.core.fit import epoch_batches, fit


@dataclass(frozen=True)
class JATPSettings:
    """Architecture and training of JATP at one scale (units in comments)."""

    width: int = 64  # U-Net width at full resolution (doubled at half resolution)
    eps: float = 8 / 255  # budget of the full adversarial examples
    attack_steps: int = 5
    step_size: float = 2 / 255
    lambda_pix: float = 1.0  # weight of the pixel-wise loss
    n_train: int = 50_000
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3  # Adam


SETTINGS = {
    "smoke": JATPSettings(width=8, attack_steps=1, step_size=8 / 255, n_train=256, epochs=1, batch_size=64),
    "quick": JATPSettings(width=16, attack_steps=2, step_size=4 / 255, n_train=3_000, epochs=1, batch_size=64),
    "paper": JATPSettings(),
}


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class JATP(Purifier):
    """Two-level residual U-Net pre-processor. (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1]; H, W even.

    Deterministic and differentiable (white-box attacks go through it).
    """

    def __init__(self, channels: int = 3, width: int = 64):
        super().__init__()
        self.enc1 = nn.Sequential(_conv(channels, width), _conv(width, width))
        self.enc2 = nn.Sequential(_conv(width, 2 * width, stride=2), _conv(2 * width, 2 * width))
        self.dec1 = nn.Sequential(_conv(3 * width, width), _conv(width, width))
        self.out = nn.Conv2d(width, channels, 1)

    def forward(self, x):
        check_images(x, "x")
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"JATP's U-Net downsamples once: height and width must be even, got {tuple(x.shape[-2:])}.")
        e1 = self.enc1(x * 2 - 1)
        e2 = F.interpolate(self.enc2(e1), size=e1.shape[-2:], mode="bilinear", align_corners=False)
        return (x + self.out(self.dec1(torch.cat([e1, e2], 1)))).clamp(0, 1)


def build(settings: JATPSettings, channels: int) -> JATP:
    return JATP(channels, settings.width)


class FullSystemFeatures(nn.Module):
    """x ↦ f(P(x)): the target's penultimate representation of the pre-processed image."""

    def __init__(self, purifier: nn.Module, target: nn.Module):
        super().__init__()
        self.purifier, self.target = purifier, target

    def forward(self, x):
        return self.target.features(self.purifier(x))


class JATPTrainer:
    """`step(x, y)` (the lib.core.fit contract; labels unused): flip-and-crop x, craft its full adversarial
    examples and call `update(x, x_fa)`, one update of P on the natural and full adversarial images."""

    def __init__(self, purifier: JATP, target: nn.Module, settings: JATPSettings, device, seed: int = 0):
        if not hasattr(target, "features"):
            raise TypeError(f"JATP's feature loss needs the target's penultimate representation: "
                            f"{type(target).__name__} has no `features(x)` method (CifarResNet and CifarVGG have).")
        self.purifier, self.target, self.settings = purifier.to(device), target.to(device).eval(), settings
        self.opt = torch.optim.Adam(purifier.parameters(), lr=settings.lr)
        self.attack_generator = torch.Generator(device=device).manual_seed(seed)
        self.augment_generator = torch.Generator().manual_seed(seed)
        self.model = self.purifier

    def full_adversarial(self, x: torch.Tensor) -> torch.Tensor:
        """Full adversarial examples against f ∘ P (P in inference mode while attacked)."""
        s = self.settings
        system = FullSystemFeatures(self.purifier, self.target).eval()  # the attack restores this mode afterwards
        x_fa = feature_distortion(system, x, s.eps, s.attack_steps, s.step_size, generator=self.attack_generator)
        self.purifier.train()
        return x_fa

    def losses(self, x: torch.Tensor, inputs: torch.Tensor) -> dict:
        """Feature and pixel L1 terms of P(inputs) against the clean images x (inputs = natural ‖ adversarial)."""
        clean = x.repeat(len(inputs) // len(x), 1, 1, 1)
        purified = self.purifier(inputs)
        with torch.no_grad():
            clean_features = self.target.features(clean)
        return {"feat": F.l1_loss(self.target.features(purified), clean_features), "pix": F.l1_loss(purified, clean)}

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        x = augment_flip_crop(x, self.augment_generator)
        return self.update(x, self.full_adversarial(x))

    def update(self, x: torch.Tensor, x_fa: torch.Tensor) -> dict:
        self.purifier.train()
        terms = self.losses(x, torch.cat([x, x_fa]))
        loss = terms["feat"] + self.settings.lambda_pix * terms["pix"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward(inputs=list(self.purifier.parameters()))  # the target is fixed: no gradients into it
        self.opt.step()
        return {"loss": loss.item(), "feat": terms["feat"].item(), "pix": terms["pix"].item()}


def train(purifier: JATP, data: ImageData, settings: JATPSettings, *, target: nn.Module, device, seed: int = 0,
          progress: bool = True) -> dict:
    """Train JATP in place against `target` (fixed); returns metrics."""
    check_eps(settings.eps)
    start = time.perf_counter()
    trainer = JATPTrainer(purifier, target, settings, device, seed)
    losses = fit(trainer, epoch_batches(data, settings.batch_size, seed, device), epochs=settings.epochs,
                 desc="train JATP", progress=progress, show=("feat", "pix")).last
    return {"train_seconds": time.perf_counter() - start, "final_feature_loss": losses["feat"],
            "final_pixel_loss": losses["pix"]}
