"""Wavelet denoising + super-resolution (lib.defenses.superres, Mustafa et al. 2019): the EDSR network's ×2 shapes,
the defense's size handling and honest flags, its straight-through BPDA surrogate, the L1 trainer and the cached
getter."""
from __future__ import annotations

import pytest
import torch

from lib.core.cache import ModelCache
from lib.core.purifiers import Purifier, is_differentiable, is_randomized
from lib.defenses import superres as sr
from lib.defenses.superres_setup import get_superres, superres_settings
from lib.defenses.transforms import WaveletDenoise


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """As tests/test_registry.py: on 2 shared cores, 2 threads made small training steps several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_images(n: int, side: int = 16, channels: int = 3, seed: int = 0, mode: str = "bilinear") -> torch.Tensor:
    """Low-frequency images inside (0.2, 0.8) (mode 'nearest': 4×4 blocks with sharp edges), far from the clamp."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=gen)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return 0.2 + 0.6 * torch.nn.functional.interpolate(coarse, size=(side, side), mode=mode, **kwargs)


def small_defense(channels: int = 3, **kwargs) -> sr.SuperResolutionDefense:
    torch.manual_seed(0)
    return sr.SuperResolutionDefense(sr.build(sr.SETTINGS["smoke"], channels), **kwargs).eval()


@pytest.mark.parametrize("scale", ["smoke", "quick", "paper"])
def test_the_network_enlarges_twice(scale):
    s = superres_settings(scale)
    net = sr.build(s, 3)
    assert len(net.body) == s.blocks + 1 and net.head.out_channels == s.width
    with torch.no_grad():
        assert net(torch.rand(2, 3, 8, 5)).shape == (2, 3, 16, 10)
    assert sr.build(s, 1)(torch.rand(1, 1, 4, 4)).shape == (1, 1, 8, 8)


def test_an_untrained_network_with_the_image_skip_is_bicubic():
    lr = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    bicubic = torch.nn.functional.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(sr.build(superres_settings("quick"), 3)(lr), bicubic)
        plain = sr.EDSR(3, blocks=1, width=8, image_skip=False)
        assert plain.tail.weight.abs().sum() > 0 and not torch.allclose(plain(lr), bicubic)


def test_paper_scale_is_the_edsr_baseline():
    s = superres_settings("paper")
    assert (s.blocks, s.width, s.res_scale, s.lr) == (16, 64, 0.1, 1e-4)


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 3, 7, 9), (2, 1, 8, 8)])
def test_the_defense_keeps_the_input_shape_and_range(shape):
    defense = small_defense(shape[1])
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = defense(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    with torch.no_grad():
        assert torch.equal(defense(x), out)  # deterministic


def test_the_defense_is_wavelet_then_area_half_then_sr():
    defense = small_defense()
    x = smooth_images(2, side=16)
    with torch.no_grad():
        expected = defense.network(sr.downsample(WaveletDenoise(sigma=0.04)(x))).clamp(0, 1)
        assert torch.equal(defense(x), expected)
    assert torch.equal(sr.downsample(x), torch.nn.functional.avg_pool2d(x, 2))


def test_flags_and_a_value_exact_straight_through_surrogate():
    defense = small_defense()
    assert not is_differentiable(defense) and not is_randomized(defense)
    assert type(defense).bpda_surrogate is not Purifier.bpda_surrogate
    x = smooth_images(3, side=16)
    xg = x.clone().requires_grad_(True)
    surrogate = defense.bpda_surrogate(xg)
    with torch.no_grad():
        assert torch.equal(surrogate.detach(), defense(x))  # the forward in value
    weights = torch.randn(surrogate.shape, generator=torch.Generator().manual_seed(1))
    grad, = torch.autograd.grad((surrogate * weights).sum(), xg)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the wavelet step is the identity on the backward pass; the resize + SR network is differentiated exactly
    w = defense.denoise(x).requires_grad_(True)
    reference, = torch.autograd.grad((defense.super_resolve(w) * weights).sum(), w)
    torch.testing.assert_close(grad, reference)


@pytest.mark.parametrize("image_skip", [False, True])
def test_a_training_step_lowers_the_l1_loss_on_a_fixed_batch(image_skip):
    torch.manual_seed(0)
    s = sr.SuperResolutionSettings(blocks=1, width=8, lr=3e-3, epochs=1, batch_size=16, image_skip=image_skip)
    trainer = sr.SRTrainer(sr.build(s, 3), s, "cpu")
    x = smooth_images(16, side=16, mode="nearest")  # sharp edges: bicubic ×2 of the ×½ image blurs them
    first = trainer.step(x)["l1"]
    for _ in range(30):
        last = trainer.step(x)["l1"]
    assert last < (0.8 if image_skip else 0.5) * first
    lr, hr = sr.training_pair(x)
    assert lr.shape == (16, 3, 8, 8) and torch.equal(hr, x)
    assert sr.training_pair(torch.rand(1, 3, 9, 7))[1].shape == (1, 3, 8, 6)  # odd sides lose a row / column


def test_the_schedule_halves_the_learning_rate_late():
    s = sr.SuperResolutionSettings(blocks=0, width=4, lr=1e-3, lr_decay_at=0.5)
    trainer = sr.SRTrainer(sr.build(s, 3), s, "cpu")
    trainer.schedule(4, 10)
    assert trainer.opt.param_groups[0]["lr"] == 1e-3
    trainer.schedule(5, 10)
    assert trainer.opt.param_groups[0]["lr"] == 5e-4


def test_psnr_and_the_bicubic_baseline():
    x = torch.full((2, 3, 8, 8), 0.5)
    assert torch.equal(sr.bicubic(sr.downsample(x)), x)  # a constant image survives both
    assert torch.allclose(sr.psnr(x + 0.1, x), torch.full((2,), 20.0))
    quality = sr.sr_quality(sr.build(sr.SETTINGS["smoke"], 3), smooth_images(4))
    assert set(quality) == {"psnr_sr", "psnr_bicubic"} and quality["psnr_bicubic"] > 20


def test_get_superres_trains_once_then_loads_from_the_cache(tmp_path):
    """On scikit-learn's digits (1 channel, 8×8: loads in milliseconds, where shapes10's training split is
    generated in seconds); the registry's contract test builds it on shapes10."""
    cache = ModelCache(tmp_path)
    p1, r1 = get_superres("digits", "smoke", 0, device="cpu", cache=cache, progress=False)
    assert not r1["cached"] and r1["metrics"]["train_seconds"] > 0 and len(r1["metrics"]["epoch_l1"]) == 1
    p2, r2 = get_superres("digits", "smoke", 0, target=torch.nn.Identity(), target_record={"hash": "any"},
                          device="cpu", cache=cache, progress=False)
    assert r2["cached"] and r2["path"] == r1["path"] and r2["hash"] == r1["hash"]
    assert "target" not in r1["spec"] and "target" not in r1["network"]["spec"]  # defends any classifier
    assert r1["spec"]["dataset"] == "digits" and r1["spec"]["network"] == r1["network"]["hash"]
    assert not any(m.training for m in p2.modules())
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(p1(x), p2(x))
    p3, r3 = get_superres("digits", "smoke", 0, sigma=0.02, device="cpu", cache=cache, progress=False)
    assert r3["cached"] and r3["path"] == r1["path"]  # σ is a test-time choice: the same network
    assert r3["hash"] != r1["hash"] and p3.wavelet.sigma == 0.02  # but another defense
    assert len(list(tmp_path.glob("*.pt"))) == 1


def test_bad_inputs_are_clear_errors():
    defense = small_defense()
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        defense(torch.rand(1, 3, 8, 8) * 255)
    with pytest.raises(ValueError, match="1 channel.*trained on 3-channel"):
        defense(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        defense.bpda_surrogate(torch.rand(1, 3, 8, 8) + 1)
    with pytest.raises(TypeError, match="float tensor"):
        defense(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 2×2"):
        defense(torch.rand(1, 3, 1, 8))
    with pytest.raises(ValueError, match="did you mean"):
        small_defense(sigma=10)
    with pytest.raises(ValueError, match="res_scale"):
        sr.SuperResolutionSettings(res_scale=0)
    with pytest.raises(ValueError, match="Unknown scale 'fast' for super-resolution"):
        superres_settings("fast")
