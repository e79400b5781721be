"""Moving images between torch and NumPy / PIL one at a time (threaded for large images), and the argument checks the transforms share."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image



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
