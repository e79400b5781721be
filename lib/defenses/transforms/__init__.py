"""Fixed (untrained) input-transformation defenses that the five papers compare against.

Every class is a `Purifier` (lib.core.purifiers): float batches (N, C, H, W) in [0, 1] in, the same device and
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
- `none` (lib.core.purifiers.Identity): no defense

`build_transform(name, **kwargs)` builds one by name from `TRANSFORMS`.
"""
from __future__ import annotations

import inspect

from lib.core.purifiers import Identity, Purifier
from lib.defenses.transforms.compression import JPEG, FeatureDistillation, feature_distillation_table
from lib.defenses.transforms.random_ops import GaussianNoise, RandomResizePad
from lib.defenses.transforms.squeezing import BitDepthReduction, MedianSmoothing
from lib.defenses.transforms.tvm import TVM
from lib.defenses.transforms.wavelet import PixelDeflection, WaveletDenoise

__all__ = [
    "JPEG", "BitDepthReduction", "MedianSmoothing", "TVM", "RandomResizePad", "PixelDeflection",
    "WaveletDenoise", "FeatureDistillation", "GaussianNoise", "TRANSFORMS", "build_transform",
    "feature_distillation_table",
]


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
