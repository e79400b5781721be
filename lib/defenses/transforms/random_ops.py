"""Randomised transforms: random resize-and-pad (Xie et al. 2018) and additive Gaussian noise."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lib.core.purifiers import Purifier
from lib.core.settings import check_images
from lib.defenses.transforms._image_io import _check_range, _check_sigma


class RandomResizePad(Purifier):
    """Random resizing and padding (Xie et al. 2018, ICLR, "Mitigating adversarial effects through
    randomization"): resize to r × r with r uniform in [min_size, max_size), then place the result at a
    uniformly random offset on a max_size × max_size zero canvas.

    Arguments:
        min_size (int or None): smallest r; None means the input height (299 in the paper). Default: None.
        max_size (int or None): canvas size, r < max_size; None means ceil(min_size · 331/299), the paper's
            ratio (299 → 331, 224 → 248, 32 → 36). Default: None.
        resize_back (bool): bilinearly resize the canvas back to the input's H × W, so that a fixed-size
            classifier (CIFAR's 32×32) accepts it (default True). False returns the max_size canvas, as the
            paper does for Inception-v3.
        per_image (bool): draw r and the offset for each image (default); False draws once per batch,
            as the authors' TensorFlow code.
        mode (str): interpolation of the random resize; 'nearest' as the paper. Default: 'nearest'.

    Shape: (N, C, H, W) -> (N, C, H, W) with resize_back, else (N, C, max_size, max_size).
    Offsets range over all placements, [0, max_size − r] (the authors' code excludes the last one).
    Random and differentiable (resize and pad are linear); the BPDA surrogate is the identity, or a
    bilinear resize to max_size when resize_back is False.
    """

    randomized = True
    differentiable = True

    def __init__(self, min_size: int | None = None, max_size: int | None = None, resize_back: bool = True,
                 per_image: bool = True, mode: str = "nearest", seed: int = 0):
        super().__init__(seed)
        self.min_size = None if min_size is None else _check_range("min_size", min_size, 1, 100_000, integer=True)
        self.max_size = None if max_size is None else _check_range("max_size", max_size, 2, 100_000, integer=True)
        if self.min_size is not None and self.max_size is not None and self.max_size <= self.min_size:
            raise ValueError(f"max_size={max_size} must exceed min_size={min_size}: r is drawn from "
                             "[min_size, max_size).")
        if mode not in ("nearest", "nearest-exact", "bilinear"):
            raise ValueError(f"Unknown mode {mode!r}: choose 'nearest', 'nearest-exact' or 'bilinear'.")
        self.resize_back = bool(resize_back)
        self.per_image = bool(per_image)
        self.mode = mode

    def extra_repr(self) -> str:
        return (f"min_size={self.min_size}, max_size={self.max_size}, resize_back={self.resize_back}, "
                f"per_image={self.per_image}, mode={self.mode!r}")

    def sizes(self, height: int) -> tuple[int, int]:
        """(min_size, max_size) for inputs of this height."""
        low = self.min_size if self.min_size is not None else height
        high = self.max_size if self.max_size is not None else math.ceil(low * 331 / 299)
        if high <= low:
            raise ValueError(f"max_size={high} must exceed min_size={low}.")
        return low, high

    def _interpolate(self, x: torch.Tensor, size) -> torch.Tensor:
        if self.mode == "bilinear":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=size, mode=self.mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        n, c, h, w = x.shape
        low, high = self.sizes(h)
        g = self.generator(x.device)
        draws = n if self.per_image else 1
        r = torch.randint(low, high, (draws,), generator=g, device=x.device)
        top = (torch.rand(draws, generator=g, device=x.device) * (high - r + 1)).floor().long()
        left = (torch.rand(draws, generator=g, device=x.device) * (high - r + 1)).floor().long()
        r, top, left = (v.expand(n) for v in (r, top, left))
        canvas = x.new_zeros(n, c, high, high)
        grid = torch.arange(high, device=x.device)
        for size in r.unique().tolist():  # at most high − low sizes: one vectorised placement per size
            idx = (r == size).nonzero(as_tuple=True)[0]
            resized = F.pad(self._interpolate(x[idx], (size, size)), (0, high - size, 0, high - size))
            # shift each image to its offset: row y reads (y − top) mod high, which lands in the zero padding
            # outside [top, top + size) because top ≤ high − size; likewise for columns
            rows = (grid[None, :] - top[idx, None]) % high
            cols = (grid[None, :] - left[idx, None]) % high
            k = torch.arange(len(idx), device=x.device)
            canvas[idx] = resized[k[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None],
                                  rows[:, None, :, None], cols[:, None, None, :]]
        if self.resize_back:
            canvas = F.interpolate(canvas, size=(h, w), mode="bilinear", align_corners=False)
        return canvas

    def bpda_surrogate(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize_back:
            return x
        _, high = self.sizes(x.shape[2])
        return F.interpolate(x, size=(high, high), mode="bilinear", align_corners=False)


class GaussianNoise(Purifier):
    """Additive Gaussian noise, x + σ·ε with ε ~ N(0, I), clipped to [0, 1].

    The noise layer that RDP puts in front of its purifier at inference (Table 4, σ = 0.05), as NRP's
    'dynamic' mode does; also the corruption of HGD's Fig. 5.

    Arguments:
        sigma (float): standard deviation in pixel units (0.05 ≈ 12.75/255). Default: 0.05.
        clip (bool): clip the result to [0, 1] (the purifier contract). Default: True.

    Shape: (N, C, H, W) -> (N, C, H, W). Random and differentiable (identity Jacobian where not clipped).
    """

    randomized = True
    differentiable = True

    def __init__(self, sigma: float = 0.05, clip: bool = True, seed: int = 0):
        super().__init__(seed)
        self.sigma = _check_sigma("sigma", sigma)
        self.clip = bool(clip)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, clip={self.clip}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        noise = torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
        y = x + self.sigma * noise
        return y.clamp(0, 1) if self.clip else y
