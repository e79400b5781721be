"""GAN pieces shared by the learned baseline purifiers (APE-GAN, NRP; RDP later).

- `Discriminator`: a strided convolutional critic (DCGAN / pix2pix "PatchGAN" shape): `n_layers` 4×4
  stride-2 convolutions with LeakyReLU(0.2), batch norm after all but the first, then a 3×3 convolution to
  one logit per patch. `pooled=True` averages the patch logits to one logit per image (APE-GAN's critic
  ends in a single sigmoid output).
- `standard_gan_losses(real, fake)`: the original GAN (Goodfellow et al. 2014) with the non-saturating
  generator loss, on logits (BCE with logits, numerically stable):
  L_D = −log σ(C(x)) − log(1 − σ(C(G(z)))),  L_G = −log σ(C(G(z))).
- `relativistic_gan_losses(real, fake)`: the relativistic standard GAN (RSGAN, Jolicoeur-Martineau 2019),
  the form NRP writes (Naseer et al. 2020, Eq. 4): L_D = −log σ(C(x) − C(x̂)),  L_G = −log σ(C(x̂) − C(x)).

Each loss function returns (discriminator loss, generator loss); the caller detaches the fake images for the
discriminator step and keeps them attached for the generator step (see `discriminator_step`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Discriminator(nn.Module):
    """Strided conv critic. (N, C, H, W) in [0, 1] -> patch logits (N, 1, h, w), or (N,) when pooled."""

    def __init__(self, in_channels: int = 3, width: int = 64, n_layers: int = 3, pooled: bool = False):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"A discriminator needs at least one strided layer; got n_layers={n_layers}.")
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(n_layers):
            out = width * 2 ** i
            layers.append(nn.Conv2d(channels, out, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels = out
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.pooled = pooled

    def forward(self, x):
        logits = self.body(x * 2 - 1)  # centre pixel values, as GAN critics expect inputs in [-1, 1]
        return logits.mean((1, 2, 3)) if self.pooled else logits


def standard_gan_losses(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_D, L_G) of the standard GAN with the non-saturating generator loss, from critic logits."""
    ones, zeros = torch.ones_like(real_logits), torch.zeros_like(fake_logits)
    loss_d = (F.binary_cross_entropy_with_logits(real_logits, ones)
              + F.binary_cross_entropy_with_logits(fake_logits, zeros))
    loss_g = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    return loss_d, loss_g


def relativistic_gan_losses(real_logits: torch.Tensor, fake_logits: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_D, L_G) of the relativistic standard GAN: how much more real the real image looks than the fake."""
    diff = real_logits - fake_logits
    loss_d = F.binary_cross_entropy_with_logits(diff, torch.ones_like(diff))  # −log σ(C(x) − C(x̂))
    loss_g = F.binary_cross_entropy_with_logits(-diff, torch.ones_like(diff))  # −log σ(C(x̂) − C(x))
    return loss_d, loss_g


GAN_LOSSES = {"standard": standard_gan_losses, "relativistic": relativistic_gan_losses}


def gan_losses(kind: str):
    if kind not in GAN_LOSSES:
        raise ValueError(f"Unknown GAN loss {kind!r}: choose one of {sorted(GAN_LOSSES)}.")
    return GAN_LOSSES[kind]


def discriminator_step(critic: nn.Module, optimizer: torch.optim.Optimizer, real: torch.Tensor,
                       fake: torch.Tensor, kind: str) -> float:
    """One critic update on real images and (detached) generated ones; returns the critic loss."""
    loss_d, _ = gan_losses(kind)(critic(real), critic(fake.detach()))
    optimizer.zero_grad(set_to_none=True)
    loss_d.backward()
    optimizer.step()
    return loss_d.item()


def generator_adversarial_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    """The generator's adversarial loss on attached fake images (only the generator's optimiser steps on it)."""
    fake_logits = critic(fake)
    if kind == "standard":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    return gan_losses(kind)(critic(real).detach(), fake_logits)[1]
