"""Scales, parameter validation, input checks, seeding and device resolution (lib.core.settings)."""
import dataclasses

import pytest
import torch

from lib.core.settings import SCALES, check_eps, check_images, get_scale, resolve_device, resolve_scale, seed_everything, validate_parameters


# --- scales ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCALES))
def test_scales_are_frozen(name):
    scale = get_scale(name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        scale.epochs = 1000
    assert get_scale(name) is scale and scale.name == name


def test_get_scale_passes_a_scale_through():
    assert get_scale(SCALES["smoke"]) is SCALES["smoke"]


def test_get_scale_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="Unknown scale 'huge'") as info:
        get_scale("huge")
    for name in SCALES:
        assert name in str(info.value)


def test_resolve_scale_none_reads_environment(monkeypatch):
    monkeypatch.setenv("PURIFY_SCALE", "paper")
    assert resolve_scale(None).name == "paper"
    assert resolve_scale("smoke").name == "smoke"  # an explicit name wins over the environment
    monkeypatch.delenv("PURIFY_SCALE")
    assert resolve_scale(None).name == "quick"
    monkeypatch.setenv("PURIFY_SCALE", "nonsense")
    with pytest.raises(ValueError, match="Unknown scale"):
        resolve_scale(None)


# --- budgets and images ------------------------------------------------------------------------------

def test_check_eps_in_255_units_suggests_division():
    with pytest.raises(ValueError, match="8/255"):
        check_eps(8)
    with pytest.raises(ValueError, match="step_size"):
        check_eps(2, "step_size")


def test_check_eps_negative_raises():
    with pytest.raises(ValueError, match="negative"):
        check_eps(-0.01)


def test_check_eps_accepts_pixel_units():
    assert check_eps(8 / 255) == pytest.approx(8 / 255)
    assert check_eps(0) == 0.0 and check_eps(1) == 1.0
    assert isinstance(check_eps(0), float)


def test_check_images_accepts_float_batch_in_unit_range():
    x = torch.rand(2, 3, 4, 4)
    assert check_images(x) is x
    assert check_images(torch.empty(0, 3, 4, 4)).numel() == 0


def test_check_images_rejects_uint8_with_conversion_hint():
    with pytest.raises(TypeError, match=r"x\.float\(\) / 255"):
        check_images(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="float tensor"):
        check_images([[0.5]])


def test_check_images_rejects_values_above_one():
    with pytest.raises(ValueError, match="divide 0-255 data by 255"):
        check_images(torch.full((1, 3, 4, 4), 255.0))


def test_check_images_rejects_negative_values_mentioning_normalisation():
    x = torch.rand(1, 3, 4, 4) - 0.5  # what a normalised batch looks like
    with pytest.raises(ValueError, match="do not normalise"):
        check_images(x)


@pytest.mark.parametrize("shape", [(3, 4, 4), (4, 4), (1, 1, 3, 4, 4)])
def test_check_images_rejects_wrong_dims(shape):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        check_images(torch.rand(*shape), name="batch")


# --- notebook parameters -----------------------------------------------------------------------------

DEFAULTS = dict(scale=None, dataset="shapes10", seed=0, eps=8 / 255, verbose=True)


def test_validate_parameters_unknown_key_names_known_ones():
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) \['sede'\]") as info:
        validate_parameters({"sede": 1}, DEFAULTS)
    assert "seed" in str(info.value) and "dataset" in str(info.value)


@pytest.mark.parametrize("key,value", [("seed", "1"), ("dataset", 3), ("eps", "0.03"), ("seed", 0.5)])
def test_validate_parameters_wrong_type_names_key(key, value):
    with pytest.raises(TypeError, match=f"Parameter {key}="):
        validate_parameters({key: value}, DEFAULTS)


def test_validate_parameters_accepts_int_for_float_and_fills_defaults():
    checked = validate_parameters({"eps": 0, "seed": 3}, DEFAULTS)
    assert checked["eps"] == 0.0 and isinstance(checked["eps"], float)
    assert checked["seed"] == 3 and checked["dataset"] == "shapes10"
    assert validate_parameters({"scale": "smoke"}, DEFAULTS)["scale"] == "smoke"  # None default: any type
    assert validate_parameters({"dataset": None}, DEFAULTS)["dataset"] is None


def test_validate_parameters_does_not_mutate_defaults():
    defaults = dict(DEFAULTS)
    validate_parameters({"seed": 5}, defaults)
    assert defaults == DEFAULTS


# --- seeding and devices -----------------------------------------------------------------------------

def test_seed_everything_repeats_torch_numpy_and_random():
    import random

    import numpy as np

    seed_everything(123)
    first = (torch.randn(5), np.random.rand(3), random.random())
    seed_everything(123)
    second = (torch.randn(5), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2]
    seed_everything(124)
    assert not torch.equal(torch.randn(5), first[0])


def test_resolve_device_auto_without_cuda_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    dev = torch.device("cpu")
    assert resolve_device(dev) is dev


def test_resolve_device_cuda_without_cuda_raises(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:1")


def test_resolve_device_unknown_name_raises():
    with pytest.raises(ValueError, match="Unknown device 'gpu0'"):
        resolve_device("gpu0")
