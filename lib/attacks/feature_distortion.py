"""The self-supervised feature-distortion attack of NRP (Naseer et al. 2020) and RDP: no labels needed."""
from __future__ import annotations

import torch
from torch import nn
from torchattacks.attack import Attack

from lib.core.settings import check_eps, check_images
from lib.attacks.pgd import default_step_size, pgd_linf


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
        start = None
        if self.random_start:
            noise = torch.rand(images.shape, generator=self.generator, device=images.device,
                               dtype=images.dtype) if self.generator is not None else torch.rand_like(images)
            start = (images + (2 * noise - 1) * self.eps).clamp(0, 1)
        return pgd_linf(self.get_logits, images, clean_features, eps=self.eps, steps=self.steps, step_size=self.alpha,
                        start=start, random_start=False, loss=_distortion)


def _distortion(features: torch.Tensor, clean_features: torch.Tensor) -> torch.Tensor:
    """Δ of NRP's Eq. 2: the mean squared difference of the feature maps (the authors' `nn.MSELoss`)."""
    return (features - clean_features).pow(2).mean()


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
