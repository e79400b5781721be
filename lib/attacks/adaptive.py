"""The papers' own adaptive attacks on their defenses (beyond the threat models of lib.attacks.threat_models).

- DIR's mask-aware attack (Eq. 8): PGD against h ∘ g with the defense's random masks known to the attacker
  and held fixed, so the attack sees exactly the function that will be evaluated. `denoiser` is any module
  with DIR's `draw_masks(x)` and `restore(x, masks)` (lib.defenses.dir_denoiser."DIRDenoiser").
"""
from __future__ import annotations

import torch
from torch import nn

from lib.attacks.pgd import pgd_linf
from lib.core.fit import Frozen


class _FixedMasks(nn.Module):
    """x ↦ h(x̃) with the denoiser's masks fixed to `masks` (what the mask-aware attacker knows)."""

    def __init__(self, denoiser: nn.Module, target: nn.Module, masks: torch.Tensor):
        super().__init__()
        self.denoiser, self.target, self.masks = denoiser, target, masks

    def forward(self, x):
        return self.target(self.denoiser.restore(x, self.masks))


def mask_aware_attack(denoiser: nn.Module, target: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      masks: torch.Tensor | None = None, eps: float = 8 / 255, steps: int = 40,
                      step_size: float = 2 / 255, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8: PGD against h ∘ g with the defense's masks known and fixed. Returns (x_adv, masks).

    masks: the masks the defense will use (drawn from the denoiser's own generator when None); evaluate
    with `target(denoiser.restore(x_adv, masks))`. The random start comes from `generator` (x's device).
    """
    masks = denoiser.draw_masks(x) if masks is None else masks
    was_training = denoiser.training
    denoiser.eval()
    with Frozen(target):
        x_adv = pgd_linf(_FixedMasks(denoiser, target, masks), x, y, eps=eps, steps=steps, step_size=step_size,
                         generator=generator)
    denoiser.train(was_training)
    return x_adv, masks
