"""RDP: a purifier P and a reconstructor R that share P's latent, so that R carries what P discards.

Paper: "Representation Disentangled Purification" (AAAI; ../shared/papers/004_d03a1644c2319be6.txt; no public
code, the paper is the only source). P maps an adversarial image back to its natural one from a latent that
should hold only the natural content; R reconstructs the adversarial image itself from its own latent
concatenated with P's, so the perturbation has a branch to live in other than P's latent (Fig. 2).

| paper | here |
|---|---|
| Eq. 1: x′ = argmax d(F_n(x′), F_n(x)), ‖x′ − x‖∞ ≤ ε, PGD, no labels | `RDPTrainer.examples` (NRP's SSP) |
| F_n: fixed VGG, layer n | `feature_extractor` (lib.defenses.nrp.FeatureExtractor) |
| P (encoder P_enc, decoder), no skip connection | `RDPPurifier.encode`, `.decode`, `.forward` |
| R, its own encoder and P's latent concatenated | `Reconstructor.forward(x′, latent)` |
| D, relativistic GAN critic | `lib.defenses.gan.Discriminator`, `relativistic` losses |
| Eq. 2 L_feat = ‖F_n(P(x′)) − F_n(x)‖₁ · Eq. 7 L^R_feat = ‖F_n(R(x′)) − F_n(x′)‖₁ | `feature_loss` |
| Eq. 3 L_pix = ‖P(x′) − x‖₁ · Eq. 8 L^R_pix = ‖R(x′) − x′‖₁ | `pixel_loss` |
| Eq. 4 L_lat = ‖P_enc(x′) − P_enc(x)‖₁ | `latent_loss` |
| Eq. 5 L_adv = −log σ(D(P(x′)) − D(x)) | `adversarial_loss` |
| Eq. 6 L_P = L_feat + α1·L_pix + α2·L_lat + α3·L_adv; Eq. 9 L_R = L^R_feat + β·L^R_pix | `weighted_losses` |
| Algorithm 1 | `RDPTrainer.step` |
| Fig. 7: P(x′), R(x′), R(x′) with P's latent replaced by noise | `disentangled_outputs` |
| Fig. 8 ablations | `RDPSettings.drop` |
| Table 4's dynamic mode (Gaussian noise layer σ 0.05 before P) | compose with transforms' `GaussianNoise` |

Our choices where the paper is silent, and why:
- P and R: "a convolutional layer and multiple basic blocks" (ESRGAN / DeblurGAN) without the skip connection.
  We take DeblurGAN's shape: a 3×3 convolution, `downsample` stride-2 4×4 convolutions that double the width,
  `encoder_blocks` residual blocks (lib.defenses.nrp.ResidualBlock, batch norm) — that is P_enc, and its
  output (N, width·2^downsample, H/2^downsample, W/2^downsample) is "the latent" — then `decoder_blocks`
  residual blocks, transposed convolutions back up and a 3×3 convolution to the image. No input is ever
  added to the output (NRP's and DeblurGAN's global residual removed, as the paper says), and the output is
  a sigmoid, so the image is in [0, 1] without a clamp that would cut gradients. Paper: width 64, 2
  downsamplings, 5 + 4 blocks (DeblurGAN's 9), a 32×32 latent for 128×128 crops; quick: width 16, 1
  downsampling, 1 + 1 blocks, a 16×16 latent for 32×32 images (8×8 is too coarse for a decoder without skip
  connections to restore 32-pixel detail within one short epoch).
- R has P's sizes. Its decoder takes [R_enc(x′), P_enc(x′)] concatenated along channels (the paper:
  "concatenated with the latent representations extracted by the encoder of R") and first fuses them with
  a 3×3 convolution back to the latent width.
- Gradients: L_R back-propagates into P_enc through the shared latent (`latent_grad=True`): one backward
  pass of L_P + L_R, then P's and R's Adam steps. L_P does not depend on R, so R minimises L_R; P minimises
  L_P + L_R. Algorithm 1's "update P and R to minimise L_P and L_R respectively" read literally (R's loss
  never reaching P) would leave P exactly as without the reconstruction branch, and Fig. 8's first
  ablation would compare a model with itself; `latent_grad=False` is that literal reading.
- L_lat's target P_enc(x) is detached (a fixed target, like F_n(x)): the adversarial latent is pulled to
  the clean one, and the loss cannot be lowered by moving both.
- ‖·‖₁ is the mean absolute difference over all entries (PyTorch's L1Loss), so the weights do not depend on
  the image or feature-map size.
- L_adv is the relativistic standard GAN that Eq. 5 writes (the paper's text says "relativistic average",
  its formula is the per-pair form): lib.defenses.gan's `relativistic` losses, which NRP uses too.
- D: "VGG-based, five convolutional layers and one fully connected layer": lib's strided critic with
  `critic_layers` 4×4 stride-2 convolutions plus its final convolution (4 + 1 = 5 at paper), patch logits
  averaged to one logit per image in place of the fully connected layer (`pooled=True`, APE-GAN's form).
- F: the paper's is an ImageNet VGG of five convolutions; no such network ships with torchvision. At paper
  the caller passes torchvision's VGG-19 (lib's only ImageNet VGG), at smoke/quick a `vgg_small` trained on
  the embedded data (as IMPure's F). n counts VGG stages (a convolution block and its pooling): n = 3 at
  paper, the level of NRP's conv3_3 (16×16 for 128×128 crops); n = 2 at smoke/quick, so that 32×32 images
  keep an 8×8 map instead of 4×4.
- Eq. 1: d is NRP's mean squared feature difference (the one attack lib has); PGD with a uniform random
  start, 10 steps of 4/255 at paper (the paper gives neither; NRP's lib settings), 3 of 8/255 at quick, ε 16/255
  at every scale; crafted afresh for every batch against the clean images, F in eval mode.
- Update order: on each batch D first (on P(x′) detached), then P and R. Algorithm 1 lists P and R (step 6)
  before D (step 7); in a loop the two orders differ only by where the cycle starts, and D first means P's
  first adversarial loss is never measured against an untrained critic, and one forward pass of P serves
  both updates (as lib's NRP trainer does).
- Adam with PyTorch's default betas (the paper gives only lr 1e-4). Paper: 25 000 images, batch 48, random
  128×128 crops (one offset per image), 20 epochs (not given; lib's NRP setting). Quick: one epoch over
  5 000 embedded 32×32 images (156 steps), whole images, batch 32, lr 1e-3, so that a short run trains.
- Ablations (Fig. 8) are `drop`, a tuple of names from `DROPPABLE`: "reconstruction" (no R, no L_R), "lat",
  "pix", "adv" (then no critic either), "feat". A dropped term is not computed and is absent from the
  losses; the remaining weights are unchanged.
- Fig. 7's noise is Gaussian with the mean and standard deviation of P's latent over the batch, so that R's
  decoder sees a latent of the usual magnitude.
- P is differentiable and deterministic (white-box attacks go through it); it is the only part used at test.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from lib.attacks.feature_distortion import feature_distortion
from lib.core.data import ImageData
from lib.core.fit import Frozen, epoch_batches, fit
from lib.core.purifiers import Purifier
from lib.core.settings import check_eps, check_images, scale_settings
from lib.defenses.gan import Discriminator, discriminator_step, generator_adversarial_loss
from lib.defenses.nrp import FeatureExtractor, ResidualBlock

DROPPABLE = ("reconstruction", "lat", "pix", "adv", "feat")


@dataclass(frozen=True)
class RDPSettings:
    """Architecture and training of RDP at one scale (units in comments)."""

    width: int = 64  # channels after the first convolution of P and R (doubled by each downsampling)
    downsample: int = 2  # stride-2 convolutions in each encoder: the latent is H/4 × W/4 at 2
    encoder_blocks: int = 5  # residual blocks at the latent resolution, encoder side
    decoder_blocks: int = 4  # and decoder side
    critic_width: int = 64
    critic_layers: int = 4  # strided convolutions of D (+ its final convolution)
    feature_arch: str = "vgg19"  # F: torchvision's ImageNet VGG-19 at paper, a VGG trained on the data below
    feature_depth: int = 3  # n of F_n: VGG stages (convolution block + pooling)
    eps: float = 16 / 255  # Eq. 1 budget
    attack_steps: int = 10  # PGD iterations of Eq. 1 per batch
    attack_step_size: float = 4 / 255
    n_train: int = 25_000  # 25 images per ImageNet class
    epochs: int = 20
    batch_size: int = 48
    crop: int | None = 128  # random crop side (pixels); None: whole images
    lr: float = 1e-4  # Adam, P, R and D
    alpha: tuple[float, float, float] = (1e-2, 1e-1, 1e-4)  # α1 (pixel), α2 (latent), α3 (adversarial), Eq. 6
    beta: float = 1e-4  # β (pixel term of L_R), Eq. 9
    drop: tuple[str, ...] = ()  # Fig. 8 ablations, names from DROPPABLE
    latent_grad: bool = True  # L_R back-propagates into P's encoder through the shared latent

    def __post_init__(self):
        unknown = sorted(set(self.drop) - set(DROPPABLE))
        if unknown:
            raise ValueError(f"drop={self.drop!r}: unknown {unknown}; choose from {DROPPABLE}.")
        if {"feat", "pix", "lat", "adv"} <= set(self.drop):
            raise ValueError(f"drop={self.drop!r} leaves L_P without a term: keep at least one of feat, pix, lat, adv.")
        if len(self.alpha) != 3:
            raise ValueError(f"alpha={self.alpha!r} must be (α1, α2, α3): the pixel, latent and adversarial weights.")
        check_eps(self.eps)
        check_eps(self.attack_step_size, "attack_step_size")


SETTINGS = {
    "smoke": RDPSettings(width=8, downsample=1, encoder_blocks=1, decoder_blocks=0, critic_width=8,
                         critic_layers=3, feature_arch="vgg_small", feature_depth=2, attack_steps=1,
                         attack_step_size=16 / 255, n_train=256, epochs=1, batch_size=32, crop=None, lr=1e-3),
    "quick": RDPSettings(width=16, downsample=1, encoder_blocks=1, decoder_blocks=1, critic_width=16,
                         critic_layers=3, feature_arch="vgg_small", feature_depth=2, attack_steps=3,
                         attack_step_size=8 / 255, n_train=5_000, epochs=1, batch_size=32, crop=None, lr=1e-3),
    "paper": RDPSettings(),
}


def rdp_settings(scale, **changes) -> RDPSettings:
    """The settings of a scale, with fields changed (e.g. `drop=("lat",)` for an ablation)."""
    return replace(scale_settings(SETTINGS, scale, "RDP"), **changes)


# ------------------------------------------------------------------------------------------------ networks

def _encoder(channels: int, width: int, downsample: int, blocks: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, 1, 1), nn.ReLU(inplace=True)]
    for i in range(downsample):
        w = width * 2 ** i
        layers += [nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, *[ResidualBlock(width * 2 ** downsample) for _ in range(blocks)])


def _decoder(channels: int, width: int, downsample: int, blocks: int, in_channels: int) -> nn.Sequential:
    latent = width * 2 ** downsample
    layers: list[nn.Module] = []
    if in_channels != latent:  # R: fuse [own latent, P's latent]
        layers += [nn.Conv2d(in_channels, latent, 3, 1, 1, bias=False), nn.BatchNorm2d(latent),
                   nn.ReLU(inplace=True)]
    layers += [ResidualBlock(latent) for _ in range(blocks)]
    for i in reversed(range(downsample)):
        w = width * 2 ** i
        layers += [nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Conv2d(width, channels, 3, 1, 1), nn.Sigmoid())


def _check_size(x: torch.Tensor, downsample: int, who: str) -> None:
    factor = 2 ** downsample
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"{who} downsamples {downsample} times: height and width must be divisible by {factor}, "
                         f"got {tuple(x.shape[-2:])}.")


class RDPPurifier(Purifier):
    """P: encoder–decoder with no skip connection. (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    encode(x) -> latent (N, width·2^d, H/2^d, W/2^d); decode(latent) -> image. forward = decode ∘ encode, so
    the output depends on the input only through the latent. Deterministic and differentiable.
    """

    differentiable = True
    randomized = False

    def __init__(self, channels: int = 3, width: int = 64, downsample: int = 2, encoder_blocks: int = 5,
                 decoder_blocks: int = 4):
        super().__init__()
        self.downsample, self.latent_channels = downsample, width * 2 ** downsample
        self.encoder = _encoder(channels, width, downsample, encoder_blocks)
        self.decoder = _decoder(channels, width, downsample, decoder_blocks, self.latent_channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """P_enc: (N, C, H, W) -> (N, latent_channels, H/2^d, W/2^d)."""
        return self.encoder(x)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(N, latent_channels, h, w) -> (N, C, h·2^d, w·2^d) in [0, 1]."""
        return self.decoder(latent)

    def forward(self, x):
        check_images(x, "x")
        _check_size(x, self.downsample, "RDP's purifier")
        return self.decode(self.encode(x))


class Reconstructor(nn.Module):
    """R: its own encoder; the decoder takes [R_enc(x′), P's latent]. forward(x′ (N, C, H, W), latent (N, L, h, w))
    -> (N, C, H, W) in [0, 1], trained to reproduce x′ (Eqs. 7-8)."""

    def __init__(self, channels: int = 3, width: int = 64, downsample: int = 2, encoder_blocks: int = 5,
                 decoder_blocks: int = 4):
        super().__init__()
        self.downsample, self.latent_channels = downsample, width * 2 ** downsample
        self.encoder = _encoder(channels, width, downsample, encoder_blocks)
        self.decoder = _decoder(channels, width, downsample, decoder_blocks, 2 * self.latent_channels)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        _check_size(x, self.downsample, "RDP's reconstructor")
        own = self.encoder(x)
        if latent.shape != own.shape:
            raise ValueError(f"P's latent has shape {tuple(latent.shape)}, R's own {tuple(own.shape)}: build P and R "
                             "with the same sizes (`build`).")
        return self.decoder(torch.cat([own, latent], 1))


class RDP(nn.Module):
    """What RDP trains: `purifier` (P, the defense) and `reconstructor` (R, None without the reconstruction
    branch). Not itself a purifier: use `.purifier` in front of a classifier."""

    def __init__(self, purifier: RDPPurifier, reconstructor: Reconstructor | None):
        super().__init__()
        self.purifier, self.reconstructor = purifier, reconstructor


def build(settings: RDPSettings, channels: int) -> RDP:
    sizes = (channels, settings.width, settings.downsample, settings.encoder_blocks, settings.decoder_blocks)
    return RDP(RDPPurifier(*sizes), None if "reconstruction" in settings.drop else Reconstructor(*sizes))


class _VGGTrunk(nn.Module):
    """A torchvision VGG behind lib's ImageNetClassifier seen as lib's CifarVGG (`normalize`, `body`)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.normalize, self.body = network.normalize, network.net.features


def feature_extractor(network: nn.Module, depth: int = 3) -> FeatureExtractor:
    """F_n: a frozen copy of a VGG up to its depth-th pooling (lib's CifarVGG, or torchvision's behind
    ImageNetClassifier; a CifarResNet gives its first depth stages). Always in eval mode."""
    features = getattr(getattr(network, "net", None), "features", None)
    return FeatureExtractor(_VGGTrunk(network) if isinstance(features, nn.Sequential) else network, depth)


# ------------------------------------------------------------------------------------------------- losses

def feature_loss(features: nn.Module, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eqs. 2 and 7: mean |F_n(image) − F_n(target)|, the target's features fixed."""
    with torch.no_grad():
        target_features = features(target)
    return (features(image) - target_features).abs().mean()


def pixel_loss(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eqs. 3 and 8: mean |image − target|."""
    return (image - target).abs().mean()


def latent_loss(latent_adv: torch.Tensor, latent_clean: torch.Tensor) -> torch.Tensor:
    """Eq. 4: mean |P_enc(x′) − P_enc(x)|, P_enc(x) a fixed target (detached)."""
    return (latent_adv - latent_clean.detach()).abs().mean()


def adversarial_loss(critic: nn.Module, x: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
    """Eq. 5: −log σ(D(P(x′)) − D(x)), D(x) detached (only P's optimiser steps on it)."""
    return generator_adversarial_loss(critic, x, purified, "relativistic")


def loss_weights(settings: RDPSettings) -> dict[str, float]:
    """Each term's weight: L_P's (Eq. 6) and L_R's (Eq. 9)."""
    a1, a2, a3 = settings.alpha
    return {"feat": 1.0, "pix": a1, "lat": a2, "adv": a3, "feat_R": 1.0, "pix_R": settings.beta}


def weighted_losses(terms: dict[str, torch.Tensor], settings: RDPSettings) -> dict[str, torch.Tensor]:
    """The terms present plus L_P = L_feat + α1·L_pix + α2·L_lat + α3·L_adv (Eq. 6), L_R = L^R_feat + β·L^R_pix
    (Eq. 9, when R's terms are present) and `loss` = L_P + L_R, the objective of the joint backward pass."""
    w = loss_weights(settings)
    zero = next(iter(terms.values())).new_zeros(())
    out = dict(terms)
    out["L_P"] = sum((w[k] * terms[k] for k in ("feat", "pix", "lat", "adv") if k in terms), zero)
    if "feat_R" in terms or "pix_R" in terms:
        out["L_R"] = sum((w[k] * terms[k] for k in ("feat_R", "pix_R") if k in terms), zero)
    out["loss"] = out["L_P"] + out.get("L_R", zero)
    return out


def loss_terms(model: RDP, features: nn.Module, critic: nn.Module | None, x: torch.Tensor, x_adv: torch.Tensor,
               settings: RDPSettings, latent: torch.Tensor | None = None, purified: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor]:
    """Eqs. 2-5 and 7-8 on one batch (the terms not in `settings.drop`). latent, purified: P_enc(x′) and P(x′)
    when the caller has them (the trainer does, from its critic step)."""
    P, R, drop = model.purifier, model.reconstructor, settings.drop
    latent = P.encode(x_adv) if latent is None else latent
    purified = P.decode(latent) if purified is None else purified
    terms = {}
    if "feat" not in drop:
        terms["feat"] = feature_loss(features, purified, x)
    if "pix" not in drop:
        terms["pix"] = pixel_loss(purified, x)
    if "lat" not in drop:
        terms["lat"] = latent_loss(latent, P.encode(x))
    if "adv" not in drop:
        terms["adv"] = adversarial_loss(critic, x, purified)
    if R is not None and "reconstruction" not in drop:
        rebuilt = R(x_adv, latent if settings.latent_grad else latent.detach())
        terms["feat_R"] = feature_loss(features, rebuilt, x_adv)
        terms["pix_R"] = pixel_loss(rebuilt, x_adv)
    return terms


# ------------------------------------------------------------------------------------------------ training

def random_crop(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size), one random offset per image; x itself when it is not larger."""
    n, _, h, w = x.shape
    if size >= h and size >= w:
        return x
    if size > h or size > w:
        raise ValueError(f"crop={size} is larger than the images ({h}×{w}).")
    top = torch.randint(0, h - size + 1, (n,), generator=generator).to(x.device)
    left = torch.randint(0, w - size + 1, (n,), generator=generator).to(x.device)
    span = torch.arange(size, device=x.device)
    rows, cols = (top[:, None] + span)[:, :, None], (left[:, None] + span)[:, None, :]
    return x[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


class RDPTrainer:
    """Algorithm 1 under lib.core.fit's contract. `model` is the RDP (P and R); `step(x, y)` (labels unused):
    crop, Eq. 1's examples against F, then `update(x, x′)`: one update of D on P(x′) detached (skipped when
    "adv" is dropped), then one backward pass of L_P + L_R and one Adam step each for P and R. F stays in eval
    mode and frozen (lib.core.fit.Frozen) throughout."""

    def __init__(self, model: RDP, features: nn.Module, settings: RDPSettings, channels: int, device, seed: int = 0):
        self.model, self.settings = model.to(device), settings
        self.features = features.to(device).eval().requires_grad_(False)
        self.opt_p = torch.optim.Adam(model.purifier.parameters(), lr=settings.lr)
        self.opt_r = (torch.optim.Adam(model.reconstructor.parameters(), lr=settings.lr)
                      if model.reconstructor is not None else None)
        self.critic = self.opt_d = None
        if "adv" not in settings.drop:
            self.critic = Discriminator(channels, settings.critic_width, settings.critic_layers, pooled=True).to(device)
            self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=settings.lr)
        self.generator = torch.Generator(device=device).manual_seed(seed)  # Eq. 1's random starts
        self.crop_generator = torch.Generator().manual_seed(seed)

    def examples(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1: x′ in B∞(x, ε) maximising the distortion of F_n, without labels."""
        s = self.settings
        with Frozen(self.features):
            return feature_distortion(self.features, x, s.eps, s.attack_steps, s.attack_step_size,
                                      generator=self.generator)

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        if self.settings.crop is not None:
            x = random_crop(x, self.settings.crop, self.crop_generator)
        return self.update(x, self.examples(x))

    def update(self, x: torch.Tensor, x_adv: torch.Tensor) -> dict:
        """One step on (x, x′). Returns every loss term, L_P, L_R and the critic's loss (before the updates)."""
        self.model.train()
        out = {}
        with Frozen(self.features):
            latent = self.model.purifier.encode(x_adv)
            purified = self.model.purifier.decode(latent)
            if self.critic is not None:
                self.critic.train()
                out["loss_d"] = discriminator_step(self.critic, self.opt_d, x, purified, "relativistic")
            terms = weighted_losses(loss_terms(self.model, self.features, self.critic, x, x_adv, self.settings,
                                               latent, purified), self.settings)
            optimizers = [o for o in (self.opt_p, self.opt_r) if o is not None]
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            for opt in optimizers:
                opt.step()
        return {**{k: v.item() for k, v in terms.items()}, **out}


def train(model: RDP, data: ImageData, settings: RDPSettings, *, target: nn.Module, device, seed: int = 0,
          progress: bool = True) -> dict:
    """Train RDP in place on `data` with F = `feature_extractor(target, settings.feature_depth)` (target: the
    VGG standing for the paper's F, not the classifier being defended); returns metrics."""
    start = time.perf_counter()
    trainer = RDPTrainer(model, feature_extractor(target, settings.feature_depth), settings, data.info.channels,
                         device, seed)
    log = fit(trainer, epoch_batches(data.subset(settings.n_train, seed), settings.batch_size, seed, device),
              epochs=settings.epochs, desc="train RDP", progress=progress, show=("L_P", "L_R"))
    return {"train_seconds": time.perf_counter() - start, "steps": log.steps,
            **{f"final_{k}": v for k, v in log.last.items()}}


# ------------------------------------------------------------------------------------------------ analysis

@torch.no_grad()
def disentangled_outputs(purifier: RDPPurifier, reconstructor: Reconstructor, x: torch.Tensor,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Fig. 7 for adversarial images x (N, C, H, W): "purified" P(x), "reconstructed" R(x, P_enc(x)), and
    "noise_latent" R(x, z) with z Gaussian of P's latent's mean and standard deviation. Eval mode; the
    networks' modes are restored."""
    check_images(x, "x")
    modes = purifier.training, reconstructor.training
    purifier.eval()
    reconstructor.eval()
    try:
        latent = purifier.encode(x)
        noise = torch.randn(latent.shape, generator=generator, device=latent.device, dtype=latent.dtype)
        z = latent.mean() + latent.std() * noise
        return {"purified": purifier.decode(latent), "reconstructed": reconstructor(x, latent),
                "noise_latent": reconstructor(x, z)}
    finally:
        purifier.train(modes[0])
        reconstructor.train(modes[1])
