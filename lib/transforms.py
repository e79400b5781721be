"""Fixed (untrained) input-transformation defenses that the five papers compare against.

Every class is a `Purifier` (lib.purifiers): float batches (N, C, H, W) in [0, 1] in, the same device and
dtype out. Transforms that run in PIL, scikit-image or SciPy go through the CPU one image at a time (spread
over torch.get_num_threads() threads) and come back to the input's device; they set `differentiable = False`
and attack with the identity as their BPDA surrogate (Athalye et al. 2018). Random transforms draw everything
from `self.generator(x.device)`, never from torch's, NumPy's or Python's global generators.

name (class): paper, defaults; what does the work
- `jpeg` (JPEG): Das et al. 2017, Guo et al. 2018; quality 75 (IDFR tables: 25/50/75); PIL (libjpeg)
- `feature_distillation` (FeatureDistillation): Liu et al. 2019, one-pass defensive quantisation, steps 1/41;
  PIL (libjpeg) with a custom quantisation table
- `bit_depth` (BitDepthReduction): Xu et al. 2018, feature squeezing; 4 bits (CIFAR), 5 (ImageNet); torch
- `median` (MedianSmoothing): Xu et al. 2018, feature squeezing; 2×2 (or 3×3); torch, equal to scipy.ndimage
- `tvm` (TVM): Guo et al. 2018; drop 0.5, weight 0.03, split Bregman; scikit-image's TV denoiser inside FISTA
- `random_resize_pad` (RandomResizePad): Xie et al. 2018; 299 → [299, 331) → pad 331 (32 → [32, 36) → 36); torch
- `gaussian_noise` (GaussianNoise): RDP Table 4 and NRP's dynamic mode; σ 0.05; torch
- `wavelet` (WaveletDenoise): BayesShrink soft thresholding, as in Prakash et al. 2018 and Mustafa et al. 2019;
  σ 0.04; scikit-image (PyWavelets)
- `pixel_deflection` (PixelDeflection): Prakash et al. 2018; 200 deflections, window 10, σ 0.04; torch + scikit-image
- `none` (lib.purifiers.Identity): no defense

`build_transform(name, **kwargs)` builds one by name from `TRANSFORMS`.
"""
from __future__ import annotations

import inspect
import io
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.restoration import denoise_tv_bregman, denoise_tv_chambolle, denoise_wavelet

from lib.purifiers import Identity, Purifier
from lib.settings import check_images

__all__ = [
    "JPEG", "BitDepthReduction", "MedianSmoothing", "TVM", "RandomResizePad", "PixelDeflection",
    "WaveletDenoise", "FeatureDistillation", "GaussianNoise", "TRANSFORMS", "build_transform",
    "feature_distillation_table",
]


# ----------------------------------------------------------------------------------------------------------
# helpers: torch <-> NumPy / PIL, one image at a time


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) tensor -> (N, H, W, C) float64 array on the CPU."""
    return x.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()


def _from_numpy(images, like: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) array (or list of (H, W, C) arrays) -> (N, C, H, W) tensor on like's device and dtype."""
    out = torch.from_numpy(np.ascontiguousarray(np.stack(list(images)))).permute(0, 3, 1, 2)
    return out.to(device=like.device, dtype=like.dtype).contiguous()


_PARALLEL_PIXELS = 64 * 64  # below this, per-image Python overhead dominates and threads only add GIL contention


def _map_images(fn, *arrays, heavy: bool = False) -> list:
    """[fn(a[i], b[i], ...) for i], spread over torch.get_num_threads() threads when each image is large (or
    the work `heavy`): PIL, scikit-image's Cython and PyWavelets release the GIL. In order, and the same
    results for any thread count."""
    n = len(arrays[0])
    height, width = arrays[0].shape[1:3]
    workers = min(torch.get_num_threads(), n) if heavy or height * width >= _PARALLEL_PIXELS else 1
    if workers <= 1:
        return [fn(*args) for args in zip(*arrays)]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, *arrays))


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W, C) uint8, rounding to the nearest of the 256 levels."""
    return (x.detach() * 255).round().clamp(0, 255).to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()


def _pil_image(img: np.ndarray) -> Image.Image:
    """(H, W, C) uint8 -> a PIL image: C = 1 is 'L', C = 3 is 'RGB'."""
    channels = img.shape[-1]
    if channels == 1:
        return Image.fromarray(img[..., 0], "L")
    if channels == 3:
        return Image.fromarray(img, "RGB")
    raise ValueError(f"JPEG codecs take grayscale (C=1) or RGB (C=3) images; got C={channels}.")


def _jpeg_round_trip(img: np.ndarray, **save_kwargs) -> np.ndarray:
    """Encode one (H, W, C) uint8 image with PIL's JPEG encoder and decode it again (same shape, uint8)."""
    buffer = io.BytesIO()
    _pil_image(img).save(buffer, format="JPEG", **save_kwargs)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.asarray(decoded)
    return out.reshape(img.shape)


def _skimage_call(fn, img: np.ndarray, **kwargs) -> np.ndarray:
    """Apply a scikit-image filter to one (H, W, C) float image, channels handled by skimage; (H, W, C) out."""
    if img.shape[-1] == 1:
        return fn(img[..., 0], channel_axis=None, **kwargs)[..., None]
    return fn(img, channel_axis=-1, **kwargs)


def _check_range(name: str, value, low, high, *, integer: bool = False, low_open=False, high_open=False):
    if integer and (isinstance(value, bool) or int(value) != value):
        raise TypeError(f"{name} must be an integer; got {value!r}.")
    if (value < low or (low_open and value == low)) or (value > high or (high_open and value == high)):
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{name}={value!r} is outside {lo}{low}, {high}{hi}.")
    return int(value) if integer else float(value)


def _check_sigma(name: str, sigma: float) -> float:
    sigma = float(sigma)
    if sigma < 0:
        raise ValueError(f"{name}={sigma:g} is negative.")
    if sigma > 1:
        raise ValueError(f"{name}={sigma:g} is above 1, but images are in [0, 1]: did you mean "
                         f"{sigma:g}/255 = {sigma / 255:.5f}?")
    return sigma


# ----------------------------------------------------------------------------------------------------------
# JPEG and its defensive variant


class JPEG(Purifier):
    """JPEG compression: an encode-decode round trip through PIL's (libjpeg's) encoder, one image at a time.

    Paper: Dziugaite et al. 2016, Das et al. 2017; Guo et al. 2018 (ICLR, "Countering adversarial images
    using input transformations") use quality 75; IDFR Tables 1-4 compare quality 25, 50 and 75.

    Arguments:
        quality (int): libjpeg quality in [1, 100]. Default: 75.

    Shape: (N, C, H, W) -> (N, C, H, W), C in {1, 3}; values are multiples of 1/255.
    Images are rounded to the nearest uint8 level before encoding; PIL's default chroma subsampling (4:2:0)
    is kept. Non-differentiable; the BPDA surrogate is the identity (torchvision, PIL and the environment
    offer no maintained differentiable JPEG, and the identity is the standard choice of Athalye et al. 2018).
    """

    differentiable = False

    def __init__(self, quality: int = 75, seed: int = 0):
        super().__init__(seed)
        self.quality = _check_range("quality", quality, 1, 100, integer=True)

    def extra_repr(self) -> str:
        return f"quality={self.quality}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        out = _map_images(lambda img: _jpeg_round_trip(img, quality=self.quality) / 255.0, _to_uint8(x))
        return _from_numpy(out, x)


def feature_distillation_table(low_step: int = 1, high_step: int = 41, band: int = 5) -> np.ndarray:
    """The 8×8 defensive quantisation table of Feature Distillation, in natural (row-major) order.

    Entry (u, v) (u vertical, v horizontal DCT frequency) is `low_step` in the accuracy-sensitive band
    u + v < band (low frequencies, kept almost exactly) and `high_step` in the malicious-defense band
    (high frequencies, where the adversarial perturbation lives). The defaults are the table of the
    authors' public code: 'dnn' mask (u + v >= 5) × QS 40 + 1, i.e. steps 1 and 41.
    """
    u, v = np.indices((8, 8))
    return np.where(u + v < band, low_step, high_step).astype(np.int64)


class FeatureDistillation(Purifier):
    """Feature Distillation (Liu et al. 2019, CVPR, "Feature Distillation: DNN-oriented JPEG compression
    against adversarial examples"): JPEG with a defensive quantisation table, the one-pass variant.

    The paper splits the 8×8 DCT coefficients into an accuracy-sensitive low-frequency band, quantised with
    a small step, and a high-frequency malicious-defense band, quantised with a large step that removes most
    of the adversarial perturbation. We give that table (`feature_distillation_table`) to libjpeg through
    PIL's `qtables=` for the luminance and both chrominance channels, without chroma subsampling (4:4:4),
    as the authors' code quantises all three YCbCr channels with the same table at full resolution.

    Arguments:
        low_step (int): quantisation step in the accuracy-sensitive band, in [1, 255]. Default: 1.
        high_step (int): quantisation step in the malicious-defense band, in [1, 255]. Default: 41.
        band (int): coefficients (u, v) with u + v < band form the accuracy-sensitive band. Default: 5.

    Shape: (N, C, H, W) -> (N, C, H, W), C in {1, 3}.
    Deviations from the authors' code: libjpeg's integer DCT instead of SciPy's float DCT, integer steps
    (their quality-50 scaling gives 1.5 and 41.5; libjpeg's own quality-50 scaling of the same base table
    truncates to 1 and 41), and rounding rather than truncating to uint8. Non-differentiable; the BPDA
    surrogate is the identity.
    """

    differentiable = False

    def __init__(self, low_step: int = 1, high_step: int = 41, band: int = 5, seed: int = 0):
        super().__init__(seed)
        self.low_step = _check_range("low_step", low_step, 1, 255, integer=True)
        self.high_step = _check_range("high_step", high_step, 1, 255, integer=True)
        self.band = _check_range("band", band, 0, 15, integer=True)

    @property
    def table(self) -> np.ndarray:
        return feature_distillation_table(self.low_step, self.high_step, self.band)

    def extra_repr(self) -> str:
        return f"low_step={self.low_step}, high_step={self.high_step}, band={self.band}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        table = self.table.ravel().tolist()
        qtables = [table] if x.shape[1] == 1 else [table, table]
        out = _map_images(lambda img: _jpeg_round_trip(img, qtables=qtables, subsampling=0) / 255.0, _to_uint8(x))
        return _from_numpy(out, x)


# ----------------------------------------------------------------------------------------------------------
# feature squeezing


class BitDepthReduction(Purifier):
    """Colour bit-depth reduction, the first squeezer of feature squeezing (Xu et al. 2018, NDSS):
    x -> round(x · (2^bits − 1)) / (2^bits − 1), exactly 2^bits levels per channel.

    Arguments:
        bits (int): bits per channel in [1, 8]; the paper uses 1 (MNIST), 4/5 (CIFAR-10), 5 (ImageNet).
            Default: 4.

    Shape: (N, C, H, W) -> (N, C, H, W). Autograd gives a zero gradient almost everywhere (gradient
    masking), so `differentiable = False`; the BPDA surrogate is the identity.
    """

    differentiable = False

    def __init__(self, bits: int = 4, seed: int = 0):
        super().__init__(seed)
        self.bits = _check_range("bits", bits, 1, 8, integer=True)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        levels = 2 ** self.bits - 1
        return torch.round(x * levels) / levels


def _symmetric_index(size: int, before: int, after: int, device) -> torch.Tensor:
    """Indices that pad an axis like scipy.ndimage's mode='reflect' (d c b a | a b c d | d c b a)."""
    return torch.from_numpy(np.pad(np.arange(size), (before, after), mode="symmetric")).to(device)


class MedianSmoothing(Purifier):
    """Median smoothing, the second squeezer of feature squeezing (Xu et al. 2018, NDSS), per channel.

    Equal to `scipy.ndimage.median_filter(x, size=(1, 1, k, k), mode='reflect')`, the call of the
    authors' code, including its conventions: an even window of size k covers offsets [−k//2, k−1−k//2]
    and takes the upper of the two middle values; borders are reflected symmetrically (edge repeated).

    Arguments:
        kernel_size (int or (int, int)): window height and width. The paper uses 2×2 (MNIST, CIFAR-10)
            and 2×2 or 3×3 (ImageNet). Default: 2.

    Shape: (N, C, H, W) -> (N, C, H, W).
    Implemented in torch (unfold + kthvalue) so that it runs on the input's device and is differentiable:
    each output takes the gradient of the input pixel it selected, like max pooling; this is the true
    (sub)gradient of the filter, so `differentiable = True` and white-box attacks may go through it.
    """

    differentiable = True

    def __init__(self, kernel_size: int | tuple[int, int] = 2, seed: int = 0):
        super().__init__(seed)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.kernel_size = (_check_range("kernel_size", kh, 1, 99, integer=True),
                            _check_range("kernel_size", kw, 1, 99, integer=True))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        kh, kw = self.kernel_size
        n, c, h, w = x.shape
        rows = _symmetric_index(h, kh // 2, kh - 1 - kh // 2, x.device)
        cols = _symmetric_index(w, kw // 2, kw - 1 - kw // 2, x.device)
        padded = x.index_select(2, rows).index_select(3, cols)
        windows = padded.unfold(2, kh, 1).unfold(3, kw, 1).reshape(n, c, h, w, kh * kw)
        if (kh * kw) % 2:  # odd window: the middle value (torch.median is the faster kernel)
            return windows.median(dim=-1).values
        # even window: scipy takes rank size // 2 (0-based), the upper middle value; kthvalue counts from 1
        return windows.kthvalue(kh * kw // 2 + 1, dim=-1).values


# ----------------------------------------------------------------------------------------------------------
# total-variation minimisation


class TVM(Purifier):
    """Total-variation minimisation (Guo et al. 2018, ICLR, "Countering adversarial images using input
    transformations"): drop pixels at random, then reconstruct the image of least total
    variation that agrees with the pixels kept,

        z* = argmin_z  ½ ‖X ⊙ (z − x)‖² + weight · TV(z),        X ~ Bernoulli(1 − drop_prob) per value,

    with isotropic TV per channel, as the authors' code (`tvm.py`, method 'bregman', weight 0.03, pixel
    drop rate 0.5, independent per channel value).

    How it is solved: scikit-image denoises (its split-Bregman `denoise_tv_bregman(weight=1/weight)`, the
    authors' default solver, or Chambolle's `denoise_tv_chambolle(weight=weight)`); both solve the unmasked
    problem, i.e. they are the proximal operator of weight·TV. The mask is handled here by FISTA (Beck and
    Teboulle 2009) on the masked data term, whose gradient X ⊙ (z − x) is 1-Lipschitz, so each step is
    `z ← prox(X ⊙ x + (1 − X) ⊙ y)` with Nesterov momentum on y. The start fills dropped values by
    normalised Gaussian convolution of the kept ones (speed only: the problem is convex). The authors
    instead patched scikit-image's Cython split-Bregman loop to take the mask: the same problem, up to the
    boundary discretisation of TV and the solvers' tolerances. With drop_prob = 0 the result is exactly scikit-image's denoiser.

    Arguments:
        drop_prob (float): probability of dropping each value, in [0, 1). Default: 0.5.
        weight (float): λ_TV, weight of the TV term against the squared error. Default: 0.03.
        method (str): 'bregman' (default, as Guo et al.) or 'chambolle'.
        per_channel (bool): drop each channel value independently (authors' code, default) or whole pixels.
        max_iter (int): FISTA iterations at most. Default: 40.
        tol (float): stop when the RMS change of an iterate falls below tol (pixel units). Default: 1e-4.

    Shape: (N, C, H, W) -> (N, C, H, W). Random (the dropout mask); non-differentiable, identity surrogate.
    Slow: every image costs up to max_iter scikit-image denoising calls on the CPU.
    """

    differentiable = False
    randomized = True

    def __init__(self, drop_prob: float = 0.5, weight: float = 0.03, method: str = "bregman",
                 per_channel: bool = True, max_iter: int = 40, tol: float = 1e-4, seed: int = 0):
        super().__init__(seed)
        self.drop_prob = _check_range("drop_prob", drop_prob, 0, 1, high_open=True)
        self.weight = _check_range("weight", weight, 0, math.inf, low_open=True)
        if method not in ("bregman", "chambolle"):
            raise ValueError(f"Unknown TV method {method!r}: choose 'bregman' or 'chambolle'.")
        self.method = method
        self.per_channel = bool(per_channel)
        self.max_iter = _check_range("max_iter", max_iter, 1, 10_000, integer=True)
        self.tol = _check_range("tol", tol, 0, math.inf)

    def extra_repr(self) -> str:
        return (f"drop_prob={self.drop_prob}, weight={self.weight}, method={self.method!r}, "
                f"per_channel={self.per_channel}")

    def denoise(self, img: np.ndarray) -> np.ndarray:
        """scikit-image's TV denoiser (the prox of weight·TV) on one (H, W, C) float image."""
        if self.method == "bregman":
            return _skimage_call(denoise_tv_bregman, img, weight=1.0 / self.weight, isotropic=True)
        return _skimage_call(denoise_tv_chambolle, img, weight=self.weight)

    def reconstruct(self, img: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """argmin_z ½‖keep ⊙ (z − img)‖² + weight·TV(z) for one (H, W, C) image and boolean mask (FISTA)."""
        if keep.all():
            return self.denoise(img)
        m = keep.astype(np.float64)
        kept = m * img
        # start: dropped values filled by normalised convolution of the kept ones
        num, den = gaussian_filter(kept, (1, 1, 0), mode="nearest"), gaussian_filter(m, (1, 1, 0), mode="nearest")
        fallback = kept.sum() / max(m.sum(), 1.0)
        z = np.where(keep, img, np.where(den > 1e-3, num / np.maximum(den, 1e-3), fallback))
        y, t = z, 1.0
        for _ in range(self.max_iter):
            z_next = self.denoise(kept + (1 - m) * y)  # gradient step (size 1) on the masked data term, then prox
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            y = z_next + ((t - 1) / t_next) * (z_next - z)
            change = float(np.sqrt(np.mean((z_next - z) ** 2)))
            z, t = z_next, t_next
            if change < self.tol:
                break
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        n, c, h, w = x.shape
        shape = (n, c, h, w) if self.per_channel else (n, 1, h, w)
        keep = torch.rand(shape, generator=self.generator(x.device), device=x.device) >= self.drop_prob
        keep = keep.expand(n, c, h, w).permute(0, 2, 3, 1).cpu().numpy()
        out = _map_images(lambda img, k: np.clip(self.reconstruct(img, k), 0, 1), _to_numpy(x), keep, heavy=True)
        return _from_numpy(out, x)


# ----------------------------------------------------------------------------------------------------------
# randomisation


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


# ----------------------------------------------------------------------------------------------------------
# wavelet denoising and pixel deflection


class WaveletDenoise(Purifier):
    """Wavelet denoising by BayesShrink soft thresholding (Chang, Yu and Vetterli 2000), as used by pixel
    deflection (Prakash et al. 2018) and by wavelet denoising + super-resolution (Mustafa et al. 2019):
    `skimage.restoration.denoise_wavelet(x, sigma, mode='soft', method='BayesShrink', convert2ycbcr=True)`
    per image (Daubechies-1 wavelet, scikit-image's default levels), clipped to [0, 1].

    Arguments:
        sigma (float or None): noise standard deviation in pixel units; None estimates it from the image
            (scikit-image's `estimate_sigma`). Default: 0.04 (Prakash et al.'s code).
        convert2ycbcr (bool): denoise RGB images in YCbCr (ignored for C = 1). Default: True.

    Shape: (N, C, H, W) -> (N, C, H, W). Non-differentiable (NumPy); identity BPDA surrogate.
    """

    differentiable = False

    def __init__(self, sigma: float | None = 0.04, convert2ycbcr: bool = True, seed: int = 0):
        super().__init__(seed)
        self.sigma = None if sigma is None else _check_sigma("sigma", sigma)
        self.convert2ycbcr = bool(convert2ycbcr)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, convert2ycbcr={self.convert2ycbcr}"

    def denoise(self, img: np.ndarray) -> np.ndarray:
        """One (H, W, C) float image -> denoised and clipped to [0, 1]."""
        out = _skimage_call(denoise_wavelet, img, sigma=self.sigma, mode="soft", method="BayesShrink",
                            convert2ycbcr=self.convert2ycbcr and img.shape[-1] == 3, rescale_sigma=True)
        return np.clip(out, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return _from_numpy(_map_images(self.denoise, _to_numpy(x)), x)


class PixelDeflection(Purifier):
    """Pixel deflection followed by wavelet denoising (Prakash et al. 2018, CVPR, "Deflecting adversarial
    attacks with pixel deflection"), the map-free variant of the authors' code.

    `deflections` times: pick a channel (cycling R, G, B as the authors' loop), a uniformly random pixel
    (i, j), and a uniformly random source (i + a, j + b) with |a|, |b| <= window inside the image; copy
    the source value onto (i, j) in that channel. Deflections act in sequence (a later one may copy an
    earlier one's result), vectorised over the batch. Then BayesShrink soft wavelet denoising in YCbCr with
    σ = sigma (`WaveletDenoise`).

    Arguments:
        deflections (int): number of single-channel deflections per image. Default: 200 (authors' code,
            for 224×224 ImageNet images; scale it with the number of pixels for smaller images).
        window (int): half-width of the source window. Default: 10.
        sigma (float or None): σ of the wavelet denoiser (None estimates it). Default: 0.04.

    Shape: (N, C, H, W) -> (N, C, H, W).
    Deviations: no robust class-activation map (the paper's R-CAM makes salient pixels less likely to be
    deflected; the code's `-disable_map` setting, which we follow, deflects uniformly); a source may be any
    in-image pixel (the code's `x + a > 0` test also excludes row and column 0). Random (its own generator,
    on the input's device); non-differentiable because of the denoiser; identity BPDA surrogate.
    """

    differentiable = False
    randomized = True

    def __init__(self, deflections: int = 200, window: int = 10, sigma: float | None = 0.04, seed: int = 0):
        super().__init__(seed)
        self.deflections = _check_range("deflections", deflections, 0, 10**9, integer=True)
        self.window = _check_range("window", window, 1, 10**6, integer=True)
        self.denoiser = WaveletDenoise(sigma=sigma)

    @property
    def sigma(self) -> float | None:
        return self.denoiser.sigma

    def extra_repr(self) -> str:
        return f"deflections={self.deflections}, window={self.window}, sigma={self.sigma}"

    def deflect(self, x: torch.Tensor) -> torch.Tensor:
        """The deflection step alone: (N, C, H, W) -> (N, C, H, W), on x's device, from this generator."""
        check_images(x)
        n, c, h, w = x.shape
        k = self.deflections
        out = x.detach().clone()
        if k == 0 or x.numel() == 0:
            return out
        g, dev = self.generator(x.device), x.device
        rows = torch.randint(0, h, (n, k), generator=g, device=dev)
        cols = torch.randint(0, w, (n, k), generator=g, device=dev)

        def source(pos, size):  # uniform over the in-image positions within the window (= rejection sampling)
            low = (pos - self.window).clamp(min=0)
            high = (pos + self.window).clamp(max=size - 1)
            u = torch.rand(pos.shape, generator=g, device=dev)
            return (low + (u * (high - low + 1)).floor().long()).clamp(max=size - 1)

        src_rows, src_cols = source(rows, h), source(cols, w)
        batch = torch.arange(n, device=dev)
        for step in range(k):
            ch = step % c
            out[batch, ch, rows[:, step], cols[:, step]] = out[batch, ch, src_rows[:, step], src_cols[:, step]]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deflected = self.deflect(x)
        return _from_numpy(_map_images(self.denoiser.denoise, _to_numpy(deflected)), x)


# ----------------------------------------------------------------------------------------------------------
# registry


TRANSFORMS: dict[str, type[Purifier]] = {
    "none": Identity,
    "jpeg": JPEG,
    "feature_distillation": FeatureDistillation,
    "bit_depth": BitDepthReduction,
    "median": MedianSmoothing,
    "tvm": TVM,
    "random_resize_pad": RandomResizePad,
    "gaussian_noise": GaussianNoise,
    "wavelet": WaveletDenoise,
    "pixel_deflection": PixelDeflection,
}


def build_transform(name: str, **kwargs) -> Purifier:
    """Build a fixed input transformation by name, e.g. build_transform('jpeg', quality=50)."""
    if name not in TRANSFORMS:
        raise ValueError(f"Unknown transform {name!r}: choose one of {sorted(TRANSFORMS)}.")
    constructor = TRANSFORMS[name]
    signature = inspect.signature(constructor)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise TypeError(f"Transform {name!r} takes {signature}; got {kwargs}: {err}") from None
    return constructor(**kwargs)
