"""JPEG compression (Das et al. 2017; Guo et al. 2018) and feature distillation (Liu et al. 2019), through PIL's libjpeg."""
from __future__ import annotations


import numpy as np
import torch

from lib.core.purifiers import Purifier
from lib.core.settings import check_images
from lib.defenses.transforms._image_io import _from_numpy, _map_images, _to_uint8, _jpeg_round_trip, _check_range


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
