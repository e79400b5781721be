"""APE-GAN: a generator that maps adversarial images back to clean ones, trained with MSE plus a GAN loss.

Paper: Jin, Shen, Zhang, Wang, Dai, "APE-GAN: Adversarial Perturbation Elimination with GAN", ICASSP 2019
(arXiv 1707.05474; public code: owruby/APE-GAN).

What we follow:
- Generator (the paper's CIFAR-10 network): two 4×4 stride-2 convolutions (64, 128 channels) and two 4×4
  stride-2 transposed convolutions (64, C), batch norm and LeakyReLU between them, tanh at the end; it works
  on images scaled to [−1, 1] (we scale in and out, so the purifier maps [0, 1] to [0, 1]).
- Critic: three 4×4 stride-2 convolutions (64, 128, 256) with batch norm and LeakyReLU, one sigmoid output
  per image (lib.defenses.gan.Discriminator with `pooled=True`; the paper flattens into a linear layer instead).
- Loss: L_G = ξ1·MSE(G(x_adv), x) + ξ2·L_adv with ξ1 = 0.7, ξ2 = 0.3 (MSE on the [−1, 1] scale, as in the
  paper); L_adv is the standard non-saturating GAN loss; the critic separates x from G(x_adv).
- Training data: FGSM examples against the target, computed once before training (the paper's recipe);
  Adam lr 2e-4, β = (0.5, 0.999); two generator updates per critic update (the authors' code).

Our choices and deviations, and why:
- FGSM ε = 8/255 at every scale: the repository's budget (the paper uses ε 0.3 on MNIST and small ε on
  CIFAR-10; DIR trains every baseline at 8/255).
- Widths scale with the budget: 32/64 generator and 32-wide critic at `quick` (2 CPU cores), the paper's
  64/128 and 64 at `paper`; one epoch over 5 000 images at `quick` instead of the paper's 30 epochs.
- Differentiable and deterministic: a white-box attack goes straight through the generator.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib.attacks.registry import build_attack, run_attack
from lib.core.data import ImageData, iterate_batches
from lib.core.fit import fit
from lib.defenses.gan import Discriminator, discriminator_step, generator_adversarial_loss
from lib.core.purifiers import Purifier
from lib.core.settings import check_eps, check_images


@dataclass(frozen=True)
class APEGANSettings:
    """Architecture and training of APE-GAN at one scale (units in comments)."""

    width: int = 64  # generator base width (the paper: 64, then 128)
    critic_width: int = 64  # critic base width (64, 128, 256)
    eps: float = 8 / 255  # FGSM budget of the training examples
    n_train: int = 50_000  # training images
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-4  # Adam, β = (0.5, 0.999), generator and critic
    xi_mse: float = 0.7  # ξ1
    xi_adv: float = 0.3  # ξ2
    generator_steps: int = 2  # generator updates per critic update


SETTINGS = {
    "smoke": APEGANSettings(width=8, critic_width=8, n_train=256, epochs=1, batch_size=64),
    "quick": APEGANSettings(width=32, critic_width=32, n_train=5_000, epochs=1, batch_size=64, lr=1e-3),
    "paper": APEGANSettings(),
}


class APEGANGenerator(nn.Module):
    """conv↓ conv↓ deconv↑ deconv↑ on [−1, 1] images. (N, C, H, W) -> (N, C, H, W); H, W divisible by 4."""

    def __init__(self, channels: int = 3, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2, inplace=True),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True),
            nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh(),
        )

    def forward(self, x):
        return self.body(x)


class APEGAN(Purifier):
    """The APE-GAN generator as a purifier. (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    Deterministic and differentiable (white-box attacks go through it).
    """

    def __init__(self, channels: int = 3, width: int = 64):
        super().__init__()
        self.net = APEGANGenerator(channels, width)

    def forward(self, x):
        check_images(x, "x")
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"APE-GAN halves the image twice: height and width must be divisible by 4, got "
                             f"{tuple(x.shape[-2:])}. Resize or pad the images first.")
        return (self.net(x * 2 - 1) + 1) / 2


def build(settings: APEGANSettings, channels: int) -> APEGAN:
    return APEGAN(channels, settings.width)


class APEGANTrainer:
    """Holds the critic and both optimisers; `step(x, x_adv)` is one critic update and the generator updates."""

    def __init__(self, purifier: APEGAN, settings: APEGANSettings, channels: int, device):
        self.purifier, self.settings = purifier.to(device), settings
        self.model = self.purifier
        self.critic = Discriminator(channels, settings.critic_width, n_layers=3, pooled=True).to(device)
        betas = (0.5, 0.999)
        self.opt_g = torch.optim.Adam(purifier.parameters(), lr=settings.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=settings.lr, betas=betas)

    def step(self, x: torch.Tensor, x_adv: torch.Tensor) -> dict:
        """Returns the critic loss, and the generator's MSE and total loss before its first update."""
        self.purifier.train()
        self.critic.train()
        s = self.settings
        loss_d = discriminator_step(self.critic, self.opt_d, x, self.purifier(x_adv), "standard")
        out = {"loss_d": loss_d}
        for i in range(s.generator_steps):
            fake = self.purifier(x_adv)
            mse = F.mse_loss(fake * 2 - 1, x * 2 - 1)  # on the [−1, 1] scale of the paper
            loss_g = s.xi_mse * mse + s.xi_adv * generator_adversarial_loss(self.critic, x, fake, "standard")
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
            if i == 0:
                out.update(mse=mse.item(), loss_g=loss_g.item())
        return out


def fgsm_examples(target: nn.Module, data: ImageData, eps: float, device, batch_size: int = 256) -> torch.Tensor:
    """FGSM images against the target for a whole dataset, in its order, on the CPU (uint8 data -> float)."""
    attack = build_attack("fgsm", target.eval(), eps=eps)
    out = [run_attack(attack, x, y, seed=i).cpu() for i, (x, y) in enumerate(iterate_batches(data, batch_size, device=device))]
    return torch.cat(out)


def train(purifier: APEGAN, data: ImageData, settings: APEGANSettings, *, target: nn.Module, device, seed: int = 0,
          progress: bool = True) -> dict:
    """Train APE-GAN in place on FGSM examples of `data` against `target`; returns metrics."""
    check_eps(settings.eps)
    start = time.perf_counter()
    x_all = data.images.float().div(255)
    x_adv_all = fgsm_examples(target, data, settings.eps, device)
    attack_seconds = time.perf_counter() - start
    trainer = APEGANTrainer(purifier, settings, data.info.channels, device)
    steps_per_epoch = max(len(data) // settings.batch_size, 1)

    def pairs(epoch: int):  # (clean, FGSM) pairs in a fresh seeded order each epoch
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for b in range(steps_per_epoch):
            idx = order[b * settings.batch_size:(b + 1) * settings.batch_size]
            yield x_all[idx].to(device), x_adv_all[idx].to(device)

    losses = fit(trainer, pairs, epochs=settings.epochs, desc="train APE-GAN", progress=progress,
                 show=("mse", "loss_d"), steps_per_epoch=steps_per_epoch).last
    return {"train_seconds": time.perf_counter() - start, "attack_seconds": attack_seconds,
            "final_mse": losses["mse"], "final_loss_d": losses["loss_d"]}
