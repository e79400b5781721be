"""Wavelet denoising + super-resolution: denoise the image, then let an SR network rebuild it.

Paper: Mustafa, Khan, Hayat, Shen, Shao, "Image Super-Resolution as a Defense Against Adversarial Attacks",
IEEE Transactions on Image Processing, 2019 (IMPure's Table 2 "wavelet denoising + super-resolution", RDP's
Table 1 "SR"). The adversarial image is first denoised by soft wavelet thresholding (BayesShrink), then a
super-resolution network trained only on clean images (EDSR: Lim, Son, Kim, Nah, Lee, "Enhanced Deep Residual
Networks for Single Image Super-Resolution", CVPRW 2017) enlarges it ×2, which the paper argues maps the
off-manifold adversarial image back onto the natural-image manifold, and the classifier sees the enlarged image.
No attack, no target classifier: the same SR network defends any classifier of the dataset. The paper's text is
not in this repository: the pipeline follows our reading of it, the network and its training follow EDSR, and
every choice below marked "ours" is ours.

| paper | here |
|---|---|
| wavelet soft thresholding, BayesShrink | `SuperResolutionDefense.denoise` (our WaveletDenoise: YCbCr, σ 0.04) |
| EDSR: head conv, residual blocks (conv-ReLU-conv, ×0.1), body conv, global skip | `EDSR`, `ResBlock` |
| ×2 sub-pixel upsampler (conv to 4·F channels, pixel shuffle), tail conv | `EDSR.upsample`, `EDSR.tail` |
| EDSR baseline: 16 blocks × 64 channels | `SETTINGS["paper"]` |
| SR trained on (downsampled, original) clean pairs, L1 loss, Adam 1e-4 halved late | `SRTrainer`, `training_pair` |
| denoise → SR ×2 → classifier | `SuperResolutionDefense.forward` (size handling below) |

Our choices and deviations, and why:
- Size (ours). Our classifiers take a fixed input size (32×32 on shapes10), so the ×2 image cannot be fed to them
  as the paper feeds its ImageNet classifiers. We area-downsample the *denoised* image ×2 first and let the SR
  network enlarge it back to the input size: wavelet(x) at H×W → area ×½ → SR ×2 → H×W. Why this order and not SR
  ×2 followed by a ×½ area downsample: (1) the classifier then sees the SR network's own output, as in the paper,
  rather than a low-pass average of it; (2) an SR network trained by L1 on area pairs learns to be consistent with
  its input (the area average of its output is close to its input, because the area average of every target equals
  its input exactly), so area ×½ ∘ SR ×2 is close to the identity and the "after" order would reduce the defense
  to wavelet denoising alone (on shapes10 it returns a clean image almost unchanged); (3) the SR network then sees
  at test time the kind of input it was trained on (area-downsampled images). The paper's EDSR, trained on
  downsampled DIV2K and applied to full-resolution ImageNet images, relies on natural images looking alike across
  scales, which 32×32 images do not. The cost: the ×½ step discards 3/4 of the samples before the SR network
  rebuilds them, which is itself a smoothing the paper does not have; the reported numbers measure denoise +
  resize + SR together. Odd sides: the low-resolution image is ⌈H/2⌉ × ⌈W/2⌉ (area resampling) and the ×2 output
  is area-resampled to H × W.
- Area (box) downsampling for the training pairs (ours), not MATLAB bicubic as EDSR's DIV2K pairs: area is exactly
  the ×½ step of our test-time pipeline, and it needs no bicubic kernel port.
- Trained on the dataset's own clean training images (whole 32×32 images, 16×16 inputs), not on DIV2K patches
  (48×48 LR crops, batch 16): there is no DIV2K here, and on the embedded data the images are the natural images.
  No flip/rotation augmentation (EDSR uses it; shapes10 is generated with random rotations).
- An image-level skip (ours; `image_skip`, on at every scale): the network's output is added to bicubic ×2 of its
  input, and the tail conv starts at zero, so training starts from bicubic and learns only the missing detail.
  EDSR has no such skip; it changes nothing the network can represent, but at our CPU budgets (a few hundred Adam
  steps) an EDSR without it is still below bicubic when training stops. `image_skip=False` is EDSR exactly.
- Residual scaling 0.1 at every scale (EDSR uses it for its large 32 × 256 model; the baseline does without); a
  fixed mean shift of 0.5 instead of EDSR's DIV2K RGB mean.
- Adam β (0.9, 0.999), lr 1e-4 at paper scale, halved once after `lr_decay_at` = 2/3 of the steps (EDSR: halved
  every 2·10⁵ updates, its public code after epoch 200 of 300). `quick` trains a 4-block, 24-channel network for
  one epoch of 10,000 images at lr 1e-3 (2 CPU cores).
- σ = 0.04 for the wavelet step (ours: pixel deflection's code and our WaveletDenoise default, in YCbCr);
  `sigma=None` estimates it per image. It is a test-time choice: the same trained network serves every σ.
- Flags: deterministic (`randomized = False`). Not differentiable: the wavelet step runs in scikit-image (NumPy),
  so autograd does not reach the input. The BPDA surrogate is the forward pass itself with the wavelet step
  replaced by the identity on the backward pass only (a straight-through step): it equals forward(x) in value, and
  its gradient is that of the real resize + SR network at the denoised image. The `bpda` threat model thus
  differentiates the learned part exactly and approximates only the wavelet step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib.core.data import ImageData, iterate_batches
from lib.core.fit import epoch_batches, fit
from lib.core.purifiers import Purifier
from lib.core.settings import check_images
from lib.defenses.transforms.wavelet import WaveletDenoise


@dataclass(frozen=True)
class SuperResolutionSettings:
    """The SR network and its training at one scale (units in comments)."""

    blocks: int = 16  # residual blocks (EDSR baseline)
    width: int = 64  # feature channels F
    res_scale: float = 0.1  # each block's residual is multiplied by this before it is added
    n_train: int = 50_000  # clean training images (their ×½ area versions are the inputs)
    epochs: int = 100
    batch_size: int = 64  # whole images (EDSR: 16 LR patches of 48×48)
    lr: float = 1e-4  # Adam, β (0.9, 0.999) (EDSR)
    lr_decay_at: float = 2 / 3  # fraction of the steps after which the lr is halved once
    image_skip: bool = True  # add bicubic ×2 of the input to the output (ours; False: EDSR exactly)

    def __post_init__(self):
        if self.blocks < 0 or self.width < 1:
            raise ValueError(f"blocks={self.blocks} must be ≥ 0 and width={self.width} ≥ 1.")
        if not 0 < self.res_scale <= 1:
            raise ValueError(f"res_scale={self.res_scale} must lie in (0, 1] (EDSR: 0.1).")
        if not 0 < self.lr_decay_at <= 1:
            raise ValueError(f"lr_decay_at={self.lr_decay_at} must lie in (0, 1] (1 = never halved).")


SETTINGS = {
    "smoke": SuperResolutionSettings(blocks=1, width=8, n_train=256, epochs=1, batch_size=64, lr=1e-3),
    "quick": SuperResolutionSettings(blocks=4, width=24, n_train=10_000, epochs=1, batch_size=32, lr=1e-3),
    "paper": SuperResolutionSettings(),
}


class ResBlock(nn.Module):
    """EDSR's residual block without BatchNorm: x + res_scale · conv(ReLU(conv(x))). (N, F, h, w) -> same."""

    def __init__(self, width: int, res_scale: float = 0.1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 3, padding=1))
        self.res_scale = float(res_scale)

    def forward(self, x):
        return x + self.res_scale * self.body(x)


class EDSR(nn.Module):
    """EDSR ×2 (Lim et al. 2017): head conv, `blocks` residual blocks + a conv with a global skip, a sub-pixel
    upsampler and a tail conv.

    forward(lr: (N, C, h, w) in [0, 1]) -> (N, C, 2h, 2w), not clamped (trained by L1 towards [0, 1] images).
    image_skip: the output is bicubic ×2 of the input plus what the network adds (the tail starts at zero, so
    an untrained network is bicubic ×2); False: EDSR's own output, the tail's plus the mean shift.
    """

    scale = 2

    def __init__(self, channels: int = 3, blocks: int = 16, width: int = 64, res_scale: float = 0.1,
                 mean: float = 0.5, image_skip: bool = True):
        super().__init__()
        self.channels, self.mean, self.image_skip = int(channels), float(mean), bool(image_skip)
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(width, res_scale) for _ in range(blocks)],
                                  nn.Conv2d(width, width, 3, padding=1))
        self.upsample = nn.Sequential(nn.Conv2d(width, width * self.scale ** 2, 3, padding=1),
                                      nn.PixelShuffle(self.scale))
        self.tail = nn.Conv2d(width, channels, 3, padding=1)
        if self.image_skip:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        h = self.head(lr - self.mean)
        h = h + self.body(h)
        out = self.tail(self.upsample(h))
        if self.image_skip:
            return out + F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return out + self.mean


def build(settings: SuperResolutionSettings, channels: int) -> EDSR:
    return EDSR(channels, settings.blocks, settings.width, settings.res_scale, image_skip=settings.image_skip)


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Area (box) ×½: (N, C, H, W) -> (N, C, ⌈H/2⌉, ⌈W/2⌉); exactly 2×2 means for even sides."""
    h, w = x.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        return F.avg_pool2d(x, 2)
    return F.interpolate(x, size=(math.ceil(h / 2), math.ceil(w / 2)), mode="area")


def training_pair(hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A clean batch -> (input ×½ by area, target): (N, C, h, w), (N, C, 2h, 2w); odd sides lose their last row
    or column, so that the target is exactly twice the input."""
    h, w = hr.shape[-2:]
    hr = hr[..., : h - h % 2, : w - w % 2]
    return F.avg_pool2d(hr, 2), hr


def bicubic(lr: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The classical baseline: bicubic ×2 (or to `size`), clamped to [0, 1]."""
    size = size or (2 * lr.shape[-2], 2 * lr.shape[-1])
    return F.interpolate(lr, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def psnr(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1]: (N, C, H, W) × 2 -> (N,)."""
    mse = (x - reference).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


@torch.no_grad()
def sr_quality(network: EDSR, x: torch.Tensor, batch_size: int = 256) -> dict:
    """Mean PSNR (dB) against clean images x of SR(x ×½) and of bicubic(x ×½): how much the network restores."""
    was_training = network.training
    network.eval()
    sr, cubic = [], []
    try:
        for part in x.split(batch_size):
            lr, hr = training_pair(part)
            sr.append(psnr(network(lr).clamp(0, 1), hr))
            cubic.append(psnr(bicubic(lr), hr))
    finally:
        network.train(was_training)
    return {"psnr_sr": torch.cat(sr).mean().item(), "psnr_bicubic": torch.cat(cubic).mean().item()}


class _StraightThrough(torch.autograd.Function):
    """value forward, the identity on the backward pass (BPDA through a non-differentiable step)."""

    @staticmethod
    def forward(ctx, x, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class SuperResolutionDefense(Purifier):
    """Wavelet denoising, area ×½, SR ×2 (see the module docstring for why this order).

    forward(x: (N, C, H, W) in [0, 1], C = the network's channels, H, W ≥ 2) -> (N, C, H, W) in [0, 1].
    Deterministic; not differentiable (scikit-image); BPDA surrogate: forward with a straight-through wavelet step
    (lib.attacks.threat_models.BPDA runs the forward and the surrogate, so a BPDA step denoises twice).
    """

    differentiable = False

    def __init__(self, network: EDSR, sigma: float | None = 0.04, convert2ycbcr: bool = True, seed: int = 0):
        super().__init__(seed)
        self.network = network
        self.wavelet = WaveletDenoise(sigma=sigma, convert2ycbcr=convert2ycbcr)

    def extra_repr(self) -> str:
        return f"sigma={self.wavelet.sigma}"

    def check(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "x")
        if x.shape[1] != self.network.channels:
            raise ValueError(f"x has {x.shape[1]} channel(s) but this super-resolution network was trained on "
                             f"{self.network.channels}-channel images; use the network trained for this dataset "
                             "(get_superres(dataset, ...)).")
        if min(x.shape[-2:]) < 2:
            raise ValueError(f"x is {tuple(x.shape[-2:])} pixels; the ×½ step needs images at least 2×2.")
        return x

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """The wavelet step alone (BayesShrink soft thresholding, scikit-image): (N, C, H, W) -> same, no gradient."""
        return self.wavelet(x)

    def super_resolve(self, x: torch.Tensor) -> torch.Tensor:
        """Area ×½, then the SR network ×2, back at x's size, clamped: (N, C, H, W) -> same; differentiable."""
        out = self.network(downsample(x))
        if out.shape[-2:] != x.shape[-2:]:  # odd sides: 2⌈H/2⌉ -> H
            out = F.interpolate(out, size=x.shape[-2:], mode="area")
        return out.clamp(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.super_resolve(self.denoise(self.check(x)))

    def bpda_surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """forward(x) in value; on the backward pass the wavelet step is the identity and the SR path is exact."""
        return self.super_resolve(_StraightThrough.apply(x, self.denoise(self.check(x))))


class SRTrainer:
    """`step(x, y)` (the lib.core.fit contract; labels unused): one Adam update of the SR network on L1 between
    SR(x ×½) and x. `schedule` halves the learning rate after `lr_decay_at` of the steps."""

    def __init__(self, network: EDSR, settings: SuperResolutionSettings, device):
        self.model, self.settings = network.to(device), settings
        self.opt = torch.optim.Adam(network.parameters(), lr=settings.lr, betas=(0.9, 0.999))

    def schedule(self, step: int, total: int) -> None:
        lr = self.settings.lr * (0.5 if step >= self.settings.lr_decay_at * total else 1.0)
        for group in self.opt.param_groups:
            group["lr"] = lr

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        self.model.train()
        lr, hr = training_pair(x)
        loss = F.l1_loss(self.model(lr), hr)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"l1": loss.item()}


def train(network: EDSR, data: ImageData, settings: SuperResolutionSettings, *, device, seed: int = 0,
          progress: bool = True) -> dict:
    """Train the SR network in place on clean images (no target, no attack); returns metrics, with the PSNR of
    SR and of bicubic ×2 on 256 of the training images."""
    start = time.perf_counter()
    trainer = SRTrainer(network, settings, device)
    log = fit(trainer, epoch_batches(data, settings.batch_size, seed, device), epochs=settings.epochs,
              desc="train SR (EDSR)", progress=progress, show=("l1",))
    x = next(iterate_batches(data, 256, device=device))[0]
    return {"train_seconds": time.perf_counter() - start, "epoch_l1": log.history["l1"], **sr_quality(network, x)}
