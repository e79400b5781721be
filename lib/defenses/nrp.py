"""NRP: a purifier trained without labels against the self-supervised feature-distortion attack.

Paper: Naseer, Khan, Hayat, Khan, Porikli, "A Self-supervised Approach for Adversarial Robustness", CVPR 2020
(public code: Muzammal-Naseer/NRP, inference and the attack only).

What we follow:
- Self-supervised perturbation (SSP, Eq. 2): x' maximises the feature distortion Δ(F(x'), F(x)) of a fixed
  feature network F within the L∞ ball of ε = 16/255, no labels (`lib.attacks.feature_distortion`, the
  single implementation that RDP also uses). Crafted afresh for every batch against the clean images.
- Purifier loss (Eq. 5): L_P = α·L_adv + γ·L_img + λ·L_feat with α = 5·10⁻³, γ = 10⁻², λ = 1 (the weights the
  paper takes from ESRGAN): L_feat = Δ(F(P(x')), F(x)) (perceptual), L_img = ‖P(x') − x‖² (pixel, mean),
  L_adv the relativistic GAN loss −log σ(C(P(x')) − C(x)) against a critic C that learns to tell x from
  P(x') (lib.defenses.gan, Eq. 4). Adam lr 10⁻⁴ at `paper` scale.
- Purifier: a ResNet generator (the code's `NRP_resG` variant: convolution, stride-2 downsampling, residual
  blocks, transposed-convolution upsampling, convolution). The optional dynamic inference mode (`noise_sigma`,
  σ 0.05 in the code) adds Gaussian noise before purifying.

Our choices and deviations, and why:
- F is the first `feature_depth` stages of the naturally trained classifier of the same dataset, scale and
  seed (lib.models.zoo), a stand-in for the paper's ImageNet VGG16 `features[:16]` (conv3_3): ImageNet weights are
  not available offline and do not fit 32×32 images. Stage 2 of the small ResNet is, like conv3_3, a
  mid-level 16×16 (for 32×32 inputs) feature map.
- The generator predicts a residual added to its input (clipped to [0, 1]) and is much smaller at `quick`
  scale (width 16, 2 residual blocks; the paper uses RRDB blocks at full width); SSP uses 3 steps at
  `quick` scale; Adam lr 10⁻³ at `smoke`/`quick` so that one short epoch trains it.
- Differentiable; deterministic unless `noise_sigma > 0`.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib.attacks.feature_distortion import feature_distortion
from lib.core.data import ImageData
from lib.defenses.gan import Discriminator, discriminator_step, generator_adversarial_loss
from lib.core.purifiers import Purifier
from lib.core.settings import check_eps, check_images
from lib.core.fit import epoch_batches, fit


@dataclass(frozen=True)
class NRPSettings:
    """Architecture and training of NRP at one scale (units in comments)."""

    width: int = 64  # generator width at full resolution (doubled after the downsampling)
    blocks: int = 6  # residual blocks
    critic_width: int = 64
    feature_depth: int = 2  # stages of the natural classifier used as the feature network F
    eps: float = 16 / 255  # SSP budget
    ssp_steps: int = 10  # SSP iterations per batch
    ssp_step_size: float = 4 / 255
    n_train: int = 50_000
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4  # Adam, β = (0.9, 0.999), purifier and critic
    alpha: float = 5e-3  # weight of the relativistic adversarial loss
    gamma: float = 1e-2  # weight of the pixel loss
    lam: float = 1.0  # weight of the perceptual (feature) loss


SETTINGS = {
    "smoke": NRPSettings(width=8, blocks=1, critic_width=8, ssp_steps=1, ssp_step_size=16 / 255, n_train=256,
                         epochs=1, lr=1e-3),
    "quick": NRPSettings(width=16, blocks=2, critic_width=16, ssp_steps=3, ssp_step_size=8 / 255, n_train=5_000,
                         epochs=1, lr=1e-3),
    "paper": NRPSettings(),
}


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width))

    def forward(self, x):
        return x + self.body(x)


class NRP(Purifier):
    """ResNet-generator purifier. (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1]; H, W even.

    noise_sigma > 0 is the dynamic mode (Gaussian noise from this purifier's own generator before purifying).
    """

    def __init__(self, channels: int = 3, width: int = 64, blocks: int = 6, noise_sigma: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            *[ResidualBlock(2 * width) for _ in range(blocks)],
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, channels, 3, 1, 1),
        )
        if not 0 <= noise_sigma <= 1:
            raise ValueError(f"noise_sigma={noise_sigma!r} must be in [0, 1] (pixel units; the code's dynamic mode uses 0.05).")
        self.noise_sigma = float(noise_sigma)
        self.randomized = noise_sigma > 0

    def forward(self, x):
        check_images(x, "x")
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"NRP downsamples once: height and width must be even, got {tuple(x.shape[-2:])}.")
        if self.noise_sigma > 0:
            noise = torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
            x = (x + self.noise_sigma * noise).clamp(0, 1)
        return (x + self.net(x)).clamp(0, 1)


def build(settings: NRPSettings, channels: int) -> NRP:
    return NRP(channels, settings.width, settings.blocks)


class FeatureExtractor(nn.Module):
    """A frozen copy of a classifier's first `depth` stages: images in [0, 1] -> a mid-level feature map.

    CifarResNet: normalisation, stem and `stages[:depth]`; CifarVGG: the body up to its depth-th pooling.
    """

    def __init__(self, classifier: nn.Module, depth: int = 2):
        super().__init__()
        classifier = copy.deepcopy(classifier).eval()
        if hasattr(classifier, "stages"):
            if not 1 <= depth <= len(classifier.stages):
                raise ValueError(f"depth={depth} must be between 1 and the {len(classifier.stages)} stages.")
            layers = [classifier.normalize, classifier.conv1, classifier.bn1, nn.ReLU(), *classifier.stages[:depth]]
        elif hasattr(classifier, "body"):
            pools = [i for i, m in enumerate(classifier.body) if isinstance(m, nn.MaxPool2d)]
            if not 1 <= depth <= len(pools):
                raise ValueError(f"depth={depth} must be between 1 and the {len(pools)} poolings.")
            layers = [classifier.normalize, *list(classifier.body)[:pools[depth - 1] + 1]]
        else:
            raise TypeError(f"FeatureExtractor needs a CifarResNet or CifarVGG classifier; got "
                            f"{type(classifier).__name__}.")
        self.layers = nn.Sequential(*layers).eval().requires_grad_(False)

    def train(self, mode: bool = True):  # fixed network: always in inference mode
        return super().train(False)

    def forward(self, x):
        return self.layers(x)


class NRPTrainer:
    """Holds F, the critic and the optimisers. `step(x, y)` (the lib.core.fit contract; labels unused) crafts the
    SSP examples and calls `update(x, x_ssp)`: one critic and one purifier update."""

    def __init__(self, purifier: NRP, feature_net: nn.Module, settings: NRPSettings, channels: int, device,
                 seed: int = 0):
        self.purifier, self.features, self.settings = purifier.to(device), feature_net.to(device).eval(), settings
        self.model = self.purifier
        self.critic = Discriminator(channels, settings.critic_width, n_layers=3).to(device)
        self.opt_p = torch.optim.Adam(purifier.parameters(), lr=settings.lr)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=settings.lr)
        self.ssp_generator = torch.Generator(device=device).manual_seed(seed)

    def ssp(self, x: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return feature_distortion(self.features, x, s.eps, s.ssp_steps, s.ssp_step_size, generator=self.ssp_generator)

    def losses(self, x: torch.Tensor, purified: torch.Tensor) -> dict:
        """The perceptual and pixel terms (tensors) of the purifier loss."""
        with torch.no_grad():
            clean_features = self.features(x)
        return {"feat": F.mse_loss(self.features(purified), clean_features), "img": F.mse_loss(purified, x)}

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        return self.update(x, self.ssp(x))

    def update(self, x: torch.Tensor, x_ssp: torch.Tensor) -> dict:
        """Returns the critic loss and the purifier's loss terms before the update."""
        s = self.settings
        self.purifier.train()
        self.critic.train()
        purified = self.purifier(x_ssp)
        loss_c = discriminator_step(self.critic, self.opt_c, x, purified, "relativistic")
        terms = self.losses(x, purified)
        adv = generator_adversarial_loss(self.critic, x, purified, "relativistic")
        loss = s.alpha * adv + s.gamma * terms["img"] + s.lam * terms["feat"]
        self.opt_p.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_p.step()
        return {"loss": loss.item(), "feat": terms["feat"].item(), "img": terms["img"].item(), "adv": adv.item(),
                "loss_c": loss_c}


def train(purifier: NRP, data: ImageData, settings: NRPSettings, *, target: nn.Module, device,
          seed: int = 0, progress: bool = True) -> dict:
    """Train NRP in place with SSP examples against F (the first stages of `target`)."""
    check_eps(settings.eps)
    start = time.perf_counter()
    trainer = NRPTrainer(purifier, FeatureExtractor(target, settings.feature_depth), settings,
                         data.info.channels, device, seed)
    losses = fit(trainer, epoch_batches(data, settings.batch_size, seed, device), epochs=settings.epochs,
                 desc="train NRP", progress=progress, show=("feat", "img")).last
    return {"train_seconds": time.perf_counter() - start, "final_feature_loss": losses["feat"],
            "final_pixel_loss": losses["img"], "final_loss_c": losses["loss_c"]}
