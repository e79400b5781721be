"""Fixed input transformations (lib.defenses.transforms) against their reference implementations.

References: PIL's JPEG encoder, scipy.ndimage.median_filter, scikit-image's TV and wavelet denoisers, on real
photographs shipped with scikit-image and on the embedded shapes10 dataset.
"""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.fft import idctn
from scipy.ndimage import median_filter
from skimage import data as skdata
from skimage.restoration import denoise_tv_bregman, denoise_tv_chambolle, denoise_wavelet
from skimage.transform import resize

from lib.defenses import transforms as T
from lib.core.data import load_dataset

CUDA = torch.cuda.is_available()
EXPECTED_FLAGS = {  # name: (differentiable, randomized)
    "none": (True, False),
    "jpeg": (False, False),
    "feature_distillation": (False, False),
    "bit_depth": (False, False),
    "median": (True, False),
    "tvm": (False, True),
    "random_resize_pad": (True, True),
    "gaussian_noise": (True, True),
    "wavelet": (False, False),
    "pixel_deflection": (False, True),
}
RANDOMIZED = [name for name, (_, rand) in EXPECTED_FLAGS.items() if rand]
# small settings where the defaults would be slow or meaningless in a unit test
FAST = {"tvm": {"max_iter": 15}, "pixel_deflection": {"deflections": 100, "window": 3}}


def make(name, **kwargs):
    return T.build_transform(name, **{**FAST.get(name, {}), **kwargs})


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """astronaut, chelsea and coffee: centre square crops downscaled to 64×64, (3, 3, 64, 64) float32."""
    out = []
    for img in (skdata.astronaut(), skdata.chelsea(), skdata.coffee()):
        h, w = img.shape[:2]
        s = min(h, w)
        crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(resize(crop, (64, 64), anti_aliasing=True))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().clamp(0, 1).contiguous()


@pytest.fixture(scope="module")
def shapes() -> torch.Tensor:
    """16 test images of the embedded dataset, (16, 3, 32, 32) float32."""
    return load_dataset("shapes10", "test").subset(16).tensors()[0]


@pytest.fixture(scope="module", params=["photos", "shapes"])
def images(request) -> torch.Tensor:
    return request.getfixturevalue(request.param)


def hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).double().numpy()


def as_tensor(images) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()


def pil_round_trip(img: np.ndarray, **kwargs) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", **kwargs)
    buf.seek(0)
    return np.asarray(Image.open(buf))


# ------------------------------------------------------------------------------------------------ registry


def test_registry_flags_and_build():
    assert set(T.TRANSFORMS) == set(EXPECTED_FLAGS)
    for name, (differentiable, randomized) in EXPECTED_FLAGS.items():
        t = T.build_transform(name)
        assert (t.differentiable, t.randomized) == (differentiable, randomized), name
    assert T.build_transform("jpeg", quality=25).quality == 25


def test_build_transform_errors():
    with pytest.raises(ValueError, match="Unknown transform 'jpg'.*'jpeg'"):
        T.build_transform("jpg")
    with pytest.raises(TypeError, match="'jpeg' takes"):
        T.build_transform("jpeg", qualty=50)


@pytest.mark.parametrize("name, kwargs", [
    ("jpeg", {"quality": 0}), ("jpeg", {"quality": 50.5}), ("bit_depth", {"bits": 0}), ("bit_depth", {"bits": 9}),
    ("median", {"kernel_size": 0}), ("tvm", {"drop_prob": 1.0}), ("tvm", {"weight": 0}),
    ("tvm", {"method": "admm"}), ("random_resize_pad", {"min_size": 36, "max_size": 32}),
    ("random_resize_pad", {"mode": "bicubic"}), ("pixel_deflection", {"window": 0}),
    ("wavelet", {"sigma": 10}), ("gaussian_noise", {"sigma": 12.75}), ("gaussian_noise", {"sigma": -0.1}),
    ("feature_distillation", {"high_step": 256}),
])
def test_bad_parameters(name, kwargs):
    with pytest.raises((ValueError, TypeError)):
        T.build_transform(name, **kwargs)


@pytest.mark.parametrize("name", sorted(set(EXPECTED_FLAGS) - {"none"}))  # Identity checks nothing
def test_bad_input(name):
    t = make(name)
    x = torch.full((2, 3, 8, 8), 0.5)
    with pytest.raises(TypeError, match="float"):
        t((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="255"):
        t(x * 255)
    with pytest.raises(ValueError, match="N, C, H, W"):
        t(x[0])


# ------------------------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("name", sorted(EXPECTED_FLAGS))
def test_shape_range_dtype(name, images):
    t = make(name)
    for x in (images, images[:4].double(), images[:4, :1]):  # float32, float64, grayscale
        y = t(x)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device, name
        assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1, name


@pytest.mark.skipif(not CUDA, reason="CUDA is not available")
@pytest.mark.parametrize("name", sorted(EXPECTED_FLAGS))
def test_cuda(name, shapes):
    x = shapes.cuda()
    t = make(name)
    y = t(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.min() >= 0 and y.max() <= 1
    if not t.randomized:  # same numbers as on the CPU (to float rounding)
        assert torch.allclose(y.cpu(), make(name)(shapes), atol=1e-5)


@pytest.mark.parametrize("name", sorted(EXPECTED_FLAGS))
def test_global_rng_untouched_and_repeatable(name, shapes):
    shapes = shapes[:8]
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    t = make(name)
    y1 = t.reseed(7)(shapes)
    y2 = t.reseed(7)(shapes)
    assert torch.equal(torch.get_rng_state(), states[0]), f"{name} used torch's global RNG"
    assert np.array_equal(np.random.get_state()[1], states[1]), f"{name} used NumPy's global RNG"
    assert random.getstate() == states[2], f"{name} used Python's global RNG"
    assert torch.equal(y1, y2), f"{name} is not repeatable after reseed"
    if t.randomized:
        assert not torch.equal(y1, t.reseed(8)(shapes)), f"{name} gives the same output for two seeds"
        assert not torch.equal(y2, t(shapes)), f"{name} does not redraw its randomness at each call"


@pytest.mark.parametrize("name, kwargs", [(name, {}) for name in sorted(EXPECTED_FLAGS)]
                         + [("random_resize_pad", {"resize_back": False})])
def test_bpda_gradient(name, kwargs, shapes):
    t = make(name, **kwargs)
    x = shapes[:8].clone().requires_grad_(True)
    surrogate = t.bpda_surrogate(x)
    y = surrogate + (t(x) - surrogate).detach()
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((y * weights).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", [n for n, (diff, _) in EXPECTED_FLAGS.items() if diff and n != "none"])
def test_differentiable_ones_have_gradients(name, shapes):
    x = shapes.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(make(name)(x).square().sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ references


@pytest.mark.parametrize("quality", [25, 50, 75])
def test_jpeg_equals_pil_round_trip(quality, images):
    x8 = np.clip(np.rint(hwc(images) * 255), 0, 255).astype(np.uint8)
    expected = as_tensor([pil_round_trip(img, quality=quality) / 255.0 for img in x8])
    y = T.JPEG(quality)(images)
    assert (y - expected).abs().max() <= 1 / 255 + 1e-6
    assert (y - images).abs().mean() > 0  # it did compress


def test_jpeg_grayscale_equals_pil(photos):
    gray = photos[:, :1]
    x8 = np.clip(np.rint(hwc(gray)[..., 0] * 255), 0, 255).astype(np.uint8)
    expected = torch.from_numpy(np.stack([pil_round_trip(img, quality=50) for img in x8]) / 255.0)
    assert (T.JPEG(50)(gray)[:, 0].double() - expected).abs().max() <= 1 / 255 + 1e-6


def test_jpeg_lower_quality_loses_more(photos):
    errors = [(T.JPEG(q)(photos) - photos).abs().mean().item() for q in (25, 50, 75)]
    assert errors[0] > errors[1] > errors[2]


def test_feature_distillation_table():
    table = T.feature_distillation_table()
    assert table.shape == (8, 8)
    assert (table == 1).sum() == 15 and (table == 41).sum() == 49  # u + v < 5 is the low band
    assert table[0, 4] == table[4, 0] == 1 and table[0, 5] == table[5, 0] == table[7, 7] == 41


def test_feature_distillation_equals_pil_with_qtables(images):
    x8 = np.clip(np.rint(hwc(images) * 255), 0, 255).astype(np.uint8)
    table = T.feature_distillation_table().ravel().tolist()
    expected = as_tensor([pil_round_trip(img, qtables=[table, table], subsampling=0) / 255.0 for img in x8])
    assert (T.FeatureDistillation()(images) - expected).abs().max() <= 1 / 255 + 1e-6


def test_feature_distillation_keeps_low_and_removes_high_frequencies():
    def pattern(u, v, amplitude):
        coef = np.zeros((8, 8))
        coef[u, v] = amplitude  # orthonormal DCT, which is JPEG's, in 0-255 units
        block = np.tile(idctn(coef, norm="ortho") + 128, (4, 4)) / 255
        return torch.from_numpy(block).float().expand(1, 3, 32, 32).contiguous()

    fd = T.FeatureDistillation()
    low, high = pattern(1, 1, 60.0), pattern(3, 4, 20.0)  # u + v = 2 (step 1) and 7 (step 41)
    assert (fd(low) - low).abs().max() <= 3 / 255
    assert (high.amax() - high.amin()) > 6 / 255
    assert (fd(high).amax() - fd(high).amin()) <= 2 / 255  # 20 / 41 rounds to 0: the pattern is gone
    assert (T.JPEG(95)(high) - high).abs().max() <= 3 / 255  # ordinary JPEG keeps it


@pytest.mark.parametrize("kernel_size", [2, 3, 4, (2, 3)])
def test_median_equals_scipy(kernel_size, images):
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    expected = median_filter(images.numpy(), size=(1, 1, kh, kw), mode="reflect")
    assert torch.equal(T.MedianSmoothing(kernel_size)(images), torch.from_numpy(expected))


def test_median_gradient_selects_one_input_per_output(shapes):
    x = shapes.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(T.MedianSmoothing(3)(x).sum(), x)
    assert grad.sum().item() == pytest.approx(x.numel()) and (grad >= 0).all()


@pytest.mark.parametrize("bits", [1, 4, 5, 8])
def test_bit_depth_levels(bits, images):
    levels = 2 ** bits - 1
    ramp = torch.linspace(0, 1, 100 * 100).reshape(1, 1, 100, 100)
    squeezed = T.BitDepthReduction(bits)(ramp)
    assert squeezed.unique().numel() == 2 ** bits
    y = T.BitDepthReduction(bits)(images)
    assert torch.allclose(y * levels, (y * levels).round(), atol=1e-4)
    assert (y - images).abs().max() <= 0.5 / levels + 1e-6
    assert torch.equal(T.BitDepthReduction(bits)(y), y)  # idempotent


@pytest.mark.parametrize("method", ["bregman", "chambolle"])
def test_tv_without_dropout_equals_skimage(method, images):
    t = T.TVM(drop_prob=0.0, weight=0.03, method=method)
    if method == "bregman":
        ref = [denoise_tv_bregman(img, weight=1 / 0.03, isotropic=True, channel_axis=-1) for img in hwc(images)]
    else:
        ref = [denoise_tv_chambolle(img, weight=0.03, channel_axis=-1) for img in hwc(images)]
    assert torch.allclose(t(images), as_tensor(ref).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("method", ["bregman", "chambolle"])
def test_tvm_solves_the_masked_problem(method, photos):
    img = hwc(photos)[0]
    keep = np.random.default_rng(0).random(img.shape) >= 0.5
    t = T.TVM(weight=0.03, method=method, max_iter=60, tol=1e-5)
    z = t.reconstruct(img, keep)
    # a minimiser is a fixed point of the proximal-gradient step z = prox(keep·x + (1 − keep)·z)
    residual = np.sqrt(np.mean((t.denoise(np.where(keep, img, z)) - z) ** 2))
    assert residual < 0.5 / 255
    dropped = np.where(keep, img, 0.0)
    assert np.sqrt(np.mean((z - img) ** 2)) < 0.5 * np.sqrt(np.mean((dropped - img) ** 2))


def test_tvm_forward_drops_pixels(photos):
    no_drop = T.TVM(drop_prob=0.0)(photos)
    dropped = T.TVM(drop_prob=0.5, max_iter=15)(photos)
    whole_pixels = T.TVM(drop_prob=0.5, per_channel=False, max_iter=15)(photos)
    assert not torch.allclose(no_drop, dropped, atol=1e-3) and not torch.allclose(dropped, whole_pixels, atol=1e-3)
    assert (dropped - photos).square().mean().sqrt() < 0.1


@pytest.mark.parametrize("sigma", [0.04, None])
def test_wavelet_equals_skimage(sigma, images):
    ref = [np.clip(denoise_wavelet(img, sigma=sigma, mode="soft", method="BayesShrink", convert2ycbcr=True,
                                   rescale_sigma=True, channel_axis=-1), 0, 1) for img in hwc(images)]
    assert torch.allclose(T.WaveletDenoise(sigma)(images), as_tensor(ref), atol=1e-6)


def test_wavelet_grayscale_equals_skimage(photos):
    gray = photos[:, :1]
    ref = [np.clip(denoise_wavelet(img[..., 0], sigma=0.04, mode="soft", method="BayesShrink"), 0, 1)[..., None]
           for img in hwc(gray)]
    assert torch.allclose(T.WaveletDenoise(0.04)(gray), as_tensor(ref), atol=1e-6)


def test_pixel_deflection_copies_values_within_the_image(shapes):
    pd = T.PixelDeflection(deflections=100, window=3)
    deflected = pd.deflect(shapes)
    changed = deflected != shapes
    assert 0 < changed.flatten(1).sum(1).max() <= 100
    for n, c in {(n, c) for n, c, _, _ in changed.nonzero().tolist()}:
        originals = set(shapes[n, c].flatten().tolist())
        assert set(deflected[n, c][changed[n, c]].tolist()) <= originals
    # with no deflection only the wavelet denoiser is left
    assert torch.equal(T.PixelDeflection(deflections=0)(shapes), T.WaveletDenoise(0.04)(shapes))


def test_random_resize_pad_places_a_resized_copy(photos):
    x = 0.2 + 0.8 * photos  # strictly positive, so the zero padding is visible
    rrp = T.RandomResizePad(min_size=64, max_size=72, resize_back=False).reseed(3)
    y = rrp(x)
    assert y.shape == (3, 3, 72, 72)
    sizes = set()
    for i in range(3):
        rows, cols = (y[i] > 0).any(0).any(1).nonzero().flatten(), (y[i] > 0).any(0).any(0).nonzero().flatten()
        top, left, r = rows[0].item(), cols[0].item(), rows.numel()
        assert 64 <= r < 72 and cols.numel() == r
        assert torch.equal(y[i, :, top:top + r, left:left + r], F.interpolate(x[i:i + 1], size=(r, r))[0])
        sizes.add(r)
    batch = T.RandomResizePad(min_size=64, max_size=72, resize_back=False, per_image=False)(x)
    assert all(torch.equal(batch[0] > 0, batch[i] > 0) for i in range(3))  # one draw for the batch
    assert T.RandomResizePad()(x).shape == x.shape  # resize_back (default) keeps the input size


def test_random_resize_pad_default_sizes():
    rrp = T.RandomResizePad()
    assert rrp.sizes(299) == (299, 331) and rrp.sizes(32) == (32, 36) and rrp.sizes(224) == (224, 248)
    assert T.RandomResizePad(min_size=32, max_size=40).sizes(32) == (32, 40)


def test_gaussian_noise_statistics():
    x = torch.full((4, 3, 64, 64), 0.5)
    noise = T.GaussianNoise(0.05)(x) - x
    assert abs(noise.std().item() - 0.05) < 0.002 and abs(noise.mean().item()) < 0.002
    assert T.GaussianNoise(0.05)(torch.ones(1, 1, 8, 8)).max() <= 1


@pytest.mark.parametrize("name", ["jpeg", "tvm", "pixel_deflection"])
def test_thread_count_does_not_change_results(name, photos):  # 64×64 photos go through the thread pool
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = make(name).reseed(1)(photos)
        torch.set_num_threads(3)
        parallel = make(name).reseed(1)(photos)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(serial, parallel)
