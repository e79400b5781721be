"""Feature squeezing (Xu et al. 2018): bit-depth reduction and median smoothing, in torch."""
from __future__ import annotations


import numpy as np
import torch

from lib.core.purifiers import Purifier
from lib.core.settings import check_images
from lib.defenses.transforms._image_io import _check_range


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
