"""Wavelet denoising (BayesShrink) and pixel deflection (Prakash et al. 2018), through scikit-image."""
from __future__ import annotations


import numpy as np
import torch
from skimage.restoration import denoise_wavelet

from lib.core.purifiers import Purifier
from lib.core.settings import check_images
from lib.defenses.transforms._image_io import _to_numpy, _from_numpy, _map_images, _skimage_call, _check_range, _check_sigma


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
