"""ComDefend: compress the image to a binary code and reconstruct it, trained on clean images only.

Paper: Jia, Wei, Cao, Foroosh, "ComDefend: An Efficient Image Compression Model to Defend Adversarial
Examples", CVPR 2019 (public code: jiaxiaojunQAQ/Comdefend, TensorFlow and PyTorch training scripts).

What we follow:
- ComCNN: 3×3 convolutions with ELU, widths 16, 32, 64, 128, 256, 128, 64, 32, then 12 channels at full
  resolution (a 12-bit code per pixel, the paper's "compact representation").
- ResCNN: 3×3 convolutions with ELU, widths 32, 64, 128, 256, 128, 64, 32, 16, then C with a sigmoid.
- Training (Section 3.2): Gaussian noise of standard deviation φ = 20 is subtracted from the code before a
  sigmoid, so that only codes far from 0 carry information and the code learns to be binary; loss
  ‖ResCNN(σ(ComCNN(x) − φ·n)) − x‖² + λ·‖σ(·)‖² with λ = 10⁻⁴ (the PyTorch script's form: the penalty is
  on the sigmoid output, mean-reduced). Clean images only, no attack and no target.
- Test time: the code is binarised, b = 1[ComCNN(x) > 0] (σ > 0.5), and ResCNN reconstructs from b.

Our choices and deviations, and why:
- Narrower and shallower at `quick` scale (ComCNN 16, 32, 16 → 12; ResCNN 16, 32, 16 → C): 2 CPU cores.
- No noise at test time (the paper's test-time pipeline; the PyTorch script also adds noise when testing).
- The hard threshold has zero gradient, so `differentiable = False`. The BPDA surrogate is not the identity
  but ResCNN(σ(ComCNN(x)/φ)): the same network with the threshold softened at the temperature of the
  training noise, which keeps the gradient of the code alive (σ(ComCNN(x)) itself is saturated, because
  training drives |ComCNN(x)| far above φ). The `bpda` threat model attacks through it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib.core.data import ImageData, iterate_batches
from lib.core.purifiers import Purifier
from lib.core.settings import check_images
from lib.core.fit import epoch_batches, fit


@dataclass(frozen=True)
class ComDefendSettings:
    """Architecture and training of ComDefend at one scale (units in comments)."""

    com_widths: tuple[int, ...] = (16, 32, 64, 128, 256, 128, 64, 32)  # ComCNN hidden widths
    res_widths: tuple[int, ...] = (32, 64, 128, 256, 128, 64, 32, 16)  # ResCNN hidden widths
    code_channels: int = 12  # bits per pixel of the compact representation
    noise_std: float = 20.0  # φ, in code (pre-sigmoid) units
    lam: float = 1e-4  # weight of the code penalty
    n_train: int = 50_000
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3  # Adam, β = (0.5, 0.999) (the PyTorch script's betas)


SETTINGS = {
    "smoke": ComDefendSettings(com_widths=(8,), res_widths=(8,), n_train=256, epochs=1, batch_size=64),
    "quick": ComDefendSettings(com_widths=(16, 32, 16), res_widths=(16, 32, 16), n_train=10_000, epochs=2,
                               batch_size=64),
    "paper": ComDefendSettings(),
}


def _conv_stack(widths: list[int], final_activation: nn.Module | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Conv2d(cin, cout, 3, padding=1))
        last = i == len(widths) - 2
        if not last:
            layers.append(nn.ELU(inplace=True))
        elif final_activation is not None:
            layers.append(final_activation)
    return nn.Sequential(*layers)


class ComDefend(Purifier):
    """ComCNN → binarise → ResCNN. (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1]; any H, W.

    Deterministic; non-differentiable (threshold); BPDA surrogate: the threshold softened at temperature φ.
    """

    differentiable = False

    def __init__(self, channels: int = 3, com_widths=(16, 32, 64, 128, 256, 128, 64, 32),
                 res_widths=(32, 64, 128, 256, 128, 64, 32, 16), code_channels: int = 12, temperature: float = 20.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature={temperature!r} must be positive (the training noise's φ).")
        self.com = _conv_stack([channels, *com_widths, code_channels], None)  # linear code
        self.res = _conv_stack([code_channels, *res_widths, channels], nn.Sigmoid())
        self.temperature = float(temperature)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The real-valued compact representation ComCNN(x): (N, code_channels, H, W)."""
        return self.com(check_images(x, "x"))

    def forward(self, x):
        bits = (self.code(x) > 0).to(x.dtype)
        return self.res(bits)

    def bpda_surrogate(self, x):
        return self.res(torch.sigmoid(self.code(x) / self.temperature))


def build(settings: ComDefendSettings, channels: int) -> ComDefend:
    return ComDefend(channels, settings.com_widths, settings.res_widths, settings.code_channels, settings.noise_std)


class ComDefendTrainer:
    """`step(x, y)` (the lib.core.fit contract; labels unused): draw the training noise and call
    `update(x, noise)`, one update of ComCNN and ResCNN on clean images."""

    def __init__(self, purifier: ComDefend, settings: ComDefendSettings, device, seed: int = 0):
        self.purifier, self.settings = purifier.to(device), settings
        self.opt = torch.optim.Adam(purifier.parameters(), lr=settings.lr, betas=(0.5, 0.999))
        self.noise_generator = torch.Generator(device=device).manual_seed(seed)
        self.model = self.purifier

    def losses(self, x: torch.Tensor, noise: torch.Tensor) -> dict:
        soft_bits = torch.sigmoid(self.purifier.code(x) - self.settings.noise_std * noise)
        return {"mse": F.mse_loss(self.purifier.res(soft_bits), x), "code": soft_bits.pow(2).mean()}

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        shape = (len(x), self.settings.code_channels, *x.shape[-2:])
        return self.update(x, torch.randn(shape, generator=self.noise_generator, device=x.device, dtype=x.dtype))

    def update(self, x: torch.Tensor, noise: torch.Tensor) -> dict:
        """Returns the loss terms before the update; `noise`: standard normal, code-shaped."""
        self.purifier.train()
        terms = self.losses(x, noise)
        loss = terms["mse"] + self.settings.lam * terms["code"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "mse": terms["mse"].item(), "code": terms["code"].item()}


def train(purifier: ComDefend, data: ImageData, settings: ComDefendSettings, *, device, seed: int = 0,
          progress: bool = True) -> dict:
    """Train ComDefend in place on clean images; returns metrics (incl. the binarised reconstruction error)."""
    start = time.perf_counter()
    trainer = ComDefendTrainer(purifier, settings, device, seed)
    losses = fit(trainer, epoch_batches(data, settings.batch_size, seed, device), epochs=settings.epochs,
                 desc="train ComDefend", progress=progress, show=("mse",)).last
    with torch.no_grad():
        x = next(iterate_batches(data, 256, device=device))[0]
        binary_mse = F.mse_loss(purifier(x), x).item()
    return {"train_seconds": time.perf_counter() - start, "final_mse": losses["mse"], "binary_mse": binary_mse}
