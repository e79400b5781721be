"""ADP: adversarial purification with a score model trained by denoising score matching (IDFR's "ADP").

Paper: Yoon, Hwang, Lee, "Adversarial Purification with Score-based Generative Models", ICML 2021 (the
baseline the IDFR paper cites as ADP, Yoon et al. 2021; public code: jmyoon1/adp). A score network
s(x) ≈ ∇ log p(x) is trained with denoising score matching (DSM); purification injects Gaussian noise
and then climbs the learned log-density with deterministic score steps, so the adversarial perturbation
is first drowned and then denoised away with the noise.

| paper | here |
|---|---|
| score network trained with DSM | `DSMTrainer` on a `DUNET` (lib.defenses.hgd's U-Net): s(x̃) = (D(x̃) − x̃) / σ² |
| noise injection x₀ = x + N(0, σ_inj²) | `ADP.forward`, from the purifier's own generator |
| deterministic updates x_{t+1} = x_t + α_t s(x_t) | `ADP.forward`, α_t = λ·σ² (see below) |

Why a denoiser is a score model: for x̃ = x + σn the DSM loss ‖s(x̃) + n/σ‖² with s(x̃) = (D(x̃) − x̃)/σ²
equals ‖D(x̃) − x‖²/σ⁴, so training D to denoise in mean square *is* DSM at noise σ (Vincent 2011), and
x̃ + σ² s(x̃) = D(x̃) is Tweedie's denoised estimate. A score step of size α = λσ² is x + λ(D(x) − x).

Our choices and deviations, and why:
- The paper's score network is NCSNv2's RefineNet trained over a geometric ladder of σ. Ours is lib's U-Net
  (`DUNET`, zero-initialised output, so an untrained one is the identity) trained *blind* over σ ~ U(0,
  `sigma_max`): one network for every noise level the purification passes through, no σ input.
- The released code clamps the injected image to [0, 1]; we train on the same clamped noisy images, which
  makes the objective MSE denoising of what the purifier actually feeds the network (exact DSM only away
  from the clamp).
- The paper's adaptive step size is replaced by a fixed fraction λ (`step_fraction`) of the Tweedie step:
  with a blind denoiser the step D(x) − x already shrinks as the image gets cleaner, which is what the
  adaptive rule is for. `steps` updates, no per-image early stop (every image gets the same compute).
- Randomised (the injected noise) and differentiable (the unrolled steps): a white-box attacker
  differentiates through all of them, with EOT over the noise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lib.core.data import ImageData, iterate_batches
from lib.core.fit import epoch_batches, fit
from lib.core.purifiers import Purifier
from lib.core.settings import check_images
from lib.defenses.hgd import DUNET


@dataclass(frozen=True)
class ADPSettings:
    """Score network, DSM training and purification of ADP at one scale (units in comments)."""

    widths: tuple[int, ...] = (32, 64, 128, 128, 128)  # U-Net stage widths
    depths: tuple[int, ...] = (2, 2, 2, 2, 2)
    decoder_widths: tuple[int, ...] = (32, 64, 128, 128)
    decoder_depths: tuple[int, ...] = (2, 2, 2, 2)
    sigma_max: float = 0.5  # DSM noise levels σ ~ U(0, sigma_max), pixel units of [0, 1] images
    sigma_inject: float = 0.25  # σ_inj of the purification (the released CIFAR-10 config)
    steps: int = 10  # score updates after the injection
    step_fraction: float = 0.5  # λ: each update is x + λ(D(x) − x), a score step of size λσ²
    n_train: int = 50_000
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3  # Adam

    def __post_init__(self):
        if not 0 < self.sigma_inject <= self.sigma_max:
            raise ValueError(f"sigma_inject={self.sigma_inject} must lie in (0, sigma_max={self.sigma_max}]: the "
                             "score model is trained only on noise levels up to sigma_max.")
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be at least 1 (score updates after the noise injection).")
        if not 0 < self.step_fraction <= 1:
            raise ValueError(f"step_fraction={self.step_fraction} must lie in (0, 1] (1 = the full Tweedie step).")


SETTINGS = {
    "smoke": ADPSettings(widths=(4, 8), depths=(1, 1), decoder_widths=(4,), decoder_depths=(1,), steps=2,
                         n_train=256, epochs=1, batch_size=64),
    "quick": ADPSettings(widths=(8, 16, 32), depths=(1, 1, 1), decoder_widths=(8, 16), decoder_depths=(1, 1),
                         steps=5, n_train=10_000, epochs=4, batch_size=64),
    "paper": ADPSettings(),
}


class ADP(Purifier):
    """Noise injection, then `steps` score updates. (N, C, H, W) in [0, 1] -> same shape in [0, 1], any H, W.

    `score(x, sigma)` is the learned score s(x) at noise level σ (the network itself is blind to σ).
    """

    differentiable = True
    randomized = True

    def __init__(self, denoiser: DUNET, sigma_inject: float = 0.25, steps: int = 10, step_fraction: float = 0.5,
                 seed: int = 0):
        super().__init__(seed)
        self.denoiser = denoiser
        self.sigma_inject, self.steps, self.step_fraction = float(sigma_inject), int(steps), float(step_fraction)

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """D(x): the blind denoiser's estimate of the clean image (not clamped)."""
        return x + self.denoiser.body(x)

    def score(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return (self.denoise(x) - x) / sigma ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "x")
        noise = torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
        h = (x + self.sigma_inject * noise).clamp(0, 1)
        for _ in range(self.steps):
            h = (h + self.step_fraction * (self.denoise(h) - h)).clamp(0, 1)
        return h


def build(settings: ADPSettings, channels: int, seed: int = 0) -> ADP:
    denoiser = DUNET(channels, settings.widths, settings.depths, settings.decoder_widths, settings.decoder_depths)
    return ADP(denoiser, settings.sigma_inject, settings.steps, settings.step_fraction, seed)


def dsm_loss(purifier: ADP, x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean-square denoising of clamp(x + σn) back to x: DSM at each image's σ (see the module docstring).
    sigma: (N,) noise levels; noise: standard normal, x-shaped."""
    noisy = (x + sigma.view(-1, 1, 1, 1) * noise).clamp(0, 1)
    return F.mse_loss(purifier.denoise(noisy), x)


class DSMTrainer:
    """`step(x, y)` (the lib.core.fit contract; labels unused): one Adam update of the score network on DSM
    at noise levels drawn from U(0, sigma_max)."""

    def __init__(self, purifier: ADP, settings: ADPSettings, device, seed: int = 0):
        self.model, self.settings = purifier.to(device), settings
        self.opt = torch.optim.Adam(purifier.parameters(), lr=settings.lr)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        self.model.train()
        sigma = self.settings.sigma_max * torch.rand(len(x), generator=self.generator, device=x.device)
        noise = torch.randn(x.shape, generator=self.generator, device=x.device)
        loss = dsm_loss(self.model, x, sigma, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}


def _noisy(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=generator, device=x.device)).clamp(0, 1)


@torch.no_grad()
def denoising_error(purifier: ADP | None, x: torch.Tensor, sigma: float, seed: int = 0) -> float:
    """Mean-square error of one denoising step at noise σ, clamped to [0, 1] (the trained network's quality);
    purifier None: the error of the noisy image itself (what denoising has to beat)."""
    noisy = _noisy(x, sigma, seed)
    return F.mse_loss(noisy if purifier is None else purifier.denoise(noisy).clamp(0, 1), x).item()


def train(purifier: ADP, data: ImageData, settings: ADPSettings, *, device, seed: int = 0,
          progress: bool = True) -> dict:
    """Train the score network in place on clean images (no target, no attack); returns metrics."""
    start = time.perf_counter()
    trainer = DSMTrainer(purifier, settings, device, seed)
    log = fit(trainer, epoch_batches(data, settings.batch_size, seed, device), epochs=settings.epochs,
              desc="train ADP (DSM)", progress=progress, show=("loss",))
    purifier.eval()
    x = next(iterate_batches(data, 256, device=device))[0]
    return {"train_seconds": time.perf_counter() - start, "epoch_losses": log.history["loss"],
            "denoising_mse_at_inject": denoising_error(purifier, x, settings.sigma_inject, seed),
            "noisy_mse_at_inject": denoising_error(None, x, settings.sigma_inject, seed)}
