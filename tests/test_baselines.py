"""The learned baseline purifiers (APE-GAN, NRP, JATP, ComDefend, ME-Net) and their cached training."""
import dataclasses

import pytest
import torch

from lib.defenses import ape_gan
from lib.defenses import comdefend
from lib.defenses import jatp
from lib.defenses import menet
from lib.defenses import nrp
from lib.defenses.baselines import BASELINES, baseline_settings, get_baseline
from lib.core.cache import ModelCache
from lib.models.classifiers import build_classifier
from lib.core.data import load_dataset
from lib.eval.evaluation import clean_row
from lib.core.purifiers import is_differentiable, is_randomized


def tiny_target(dataset: str = "shapes10"):
    torch.manual_seed(0)
    model = build_classifier("resnet_small", dataset, width=4).eval()
    record = {"hash": "tiny-target", "spec": {"arch": "resnet_small", "width": 4}}
    return model, record


def fixed_batch(n: int = 16, channels: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images (the embedded data) and a fixed perturbation of them within 8/255."""
    name = "shapes10" if channels == 3 else "digits"
    x, _ = load_dataset(name, "test").subset(n, seed).tensors()
    gen = torch.Generator().manual_seed(seed)
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * 8 / 255
    return x, (x + noise).clamp(0, 1)


def smoke_purifier(name: str, channels: int = 3):
    torch.manual_seed(0)
    module = {"ape_gan": ape_gan, "nrp": nrp, "jatp": jatp, "comdefend": comdefend}[name]
    return module.build(module.SETTINGS["smoke"], channels)


# ------------------------------------------------------------------------------------------ shapes, ranges

@pytest.mark.parametrize("name", ["ape_gan", "nrp", "jatp", "comdefend"])
@pytest.mark.parametrize("channels", [3, 1])
def test_purifier_maps_images_to_images(name, channels):
    purifier = smoke_purifier(name, channels).eval()
    x = torch.rand(5, channels, 32, 32)
    with torch.no_grad():
        out = purifier(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not is_randomized(purifier)
    with torch.no_grad():
        torch.testing.assert_close(purifier(x), out)  # deterministic


@pytest.mark.parametrize("name", ["ape_gan", "nrp", "jatp", "comdefend"])
def test_purifiers_reject_images_outside_unit_range(name):
    with pytest.raises(ValueError, match=r"\[0, ?1\]"):
        smoke_purifier(name)(torch.rand(2, 3, 32, 32) * 255)


def test_ape_gan_needs_sizes_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        smoke_purifier("ape_gan")(torch.rand(1, 3, 30, 30))


@pytest.mark.parametrize("name", ["ape_gan", "nrp", "jatp"])
def test_differentiable_purifiers_pass_gradients(name):
    purifier = smoke_purifier(name).eval()
    assert is_differentiable(purifier)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    purifier(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_comdefend_binarises_and_its_bpda_surrogate_has_gradients():
    purifier = smoke_purifier("comdefend").eval()
    assert not is_differentiable(purifier)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    purifier(x).sum().backward()  # the threshold kills the gradient: that is why it needs BPDA
    assert x.grad is None or x.grad.abs().sum() == 0
    x.grad = None
    purifier.bpda_surrogate(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():  # the forward pass decodes the binary code
        bits = (purifier.code(x) > 0).float()
        torch.testing.assert_close(purifier(x), purifier.res(bits))


# ------------------------------------------------------------------------- a training step lowers the loss

def repeat_steps(step, n: int = 15) -> list[dict]:
    return [step() for _ in range(n)]


def test_ape_gan_steps_lower_the_reconstruction_loss():
    x, x_adv = fixed_batch()
    trainer = ape_gan.APEGANTrainer(smoke_purifier("ape_gan"), ape_gan.SETTINGS["smoke"], 3, "cpu")
    losses = repeat_steps(lambda: trainer.step(x, x_adv), 30)
    assert losses[-1]["mse"] < 0.8 * losses[0]["mse"]


def test_nrp_steps_lower_the_feature_loss_on_fixed_ssp_examples(shapes_model):
    classifier, _, _ = shapes_model
    x, _ = fixed_batch()
    settings = nrp.SETTINGS["smoke"]
    trainer = nrp.NRPTrainer(smoke_purifier("nrp"), nrp.FeatureExtractor(classifier, settings.feature_depth),
                             settings, 3, "cpu")
    x_ssp = trainer.ssp(x)
    assert (x_ssp - x).abs().max() <= settings.eps + 1e-6
    losses = repeat_steps(lambda: trainer.update(x, x_ssp))
    assert losses[-1]["loss"] < 0.8 * losses[0]["loss"]


def test_jatp_steps_lower_the_loss_and_attack_the_full_system(shapes_model):
    classifier, _, _ = shapes_model
    x, _ = fixed_batch()
    settings = jatp.SETTINGS["smoke"]
    classifier.zero_grad(set_to_none=True)  # the fixture's training left gradients behind
    trainer = jatp.JATPTrainer(smoke_purifier("jatp"), classifier, settings, "cpu")
    x_fa = trainer.full_adversarial(x)
    assert (x_fa - x).abs().max() <= settings.eps + 1e-6 and (x_fa != x).any()
    losses = repeat_steps(lambda: trainer.update(x, x_fa))
    assert losses[-1]["loss"] < 0.8 * losses[0]["loss"]
    assert all(p.grad is None for p in classifier.parameters())  # the target stays fixed


def test_comdefend_steps_lower_the_loss_with_fixed_noise():
    x, _ = fixed_batch()
    settings = dataclasses.replace(comdefend.SETTINGS["smoke"], lr=5e-3)
    trainer = comdefend.ComDefendTrainer(smoke_purifier("comdefend"), settings, "cpu")
    noise = torch.randn(len(x), settings.code_channels, 32, 32, generator=torch.Generator().manual_seed(1))
    losses = repeat_steps(lambda: trainer.update(x, noise), 40)
    assert losses[-1]["loss"] < 0.8 * losses[0]["loss"]


# ------------------------------------------------------------------------------------------------- ME-Net

def test_menet_full_observation_and_rank_recovers_the_image():
    x = torch.rand(3, 3, 16, 16)
    purifier = menet.MENet(p=1.0, svd_fraction=1.0)
    torch.testing.assert_close(purifier(x), x, atol=1e-5, rtol=0)


def test_menet_recovers_a_low_rank_image_from_a_masked_one():
    # rank one on ME-Net's [−1, 1] scale in its H × (C·W) layout: USVT at rank 1 fills in the 20% it never saw
    gen = torch.Generator().manual_seed(0)
    matrix = 0.8 * (torch.rand(64, 1, generator=gen) * 2 - 1) @ (torch.rand(1, 3 * 64, generator=gen) * 2 - 1).sign()
    x = ((matrix + 1) / 2).reshape(64, 3, 64).permute(1, 0, 2).unsqueeze(0)
    out = menet.MENet(p=0.8, svd_fraction=1 / 64, seed=0)(x)
    zero_filled_error = 0.2 * (x - 0.5).abs().mean()  # expected error of leaving the missing 20% at 0 (grey)
    assert (out - x).abs().mean() < 0.5 * zero_filled_error


def test_menet_randomness_is_its_own_and_seeded():
    x = torch.rand(2, 3, 16, 16)
    purifier = menet.MENet(seed=3)
    a = purifier.reseed(3)(x)
    b = purifier(x)
    c = purifier.reseed(3)(x)
    assert is_randomized(purifier) and is_differentiable(purifier)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, c)
    state = torch.random.get_rng_state()
    purifier(x)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_menet_rejects_bad_parameters():
    with pytest.raises(ValueError, match="Observation probability"):
        menet.MENet(p=(0.9, 0.5))
    with pytest.raises(ValueError, match="svd_fraction"):
        menet.MENet(svd_fraction=0)


def test_menet_bpda_pgd_stays_in_the_ball_and_raises_the_loss(shapes_model):
    classifier, x, y = shapes_model
    purifier = menet.MENet(seed=0)
    adv = menet.bpda_pgd(classifier, purifier, x[:16], y[:16], 8 / 255, 3, 4 / 255, torch.Generator().manual_seed(0))
    assert (adv - x[:16]).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        loss = lambda z: torch.nn.functional.cross_entropy(classifier(purifier.reseed(1)(z)), y[:16])  # noqa: E731
        assert loss(adv) > loss(x[:16])


# -------------------------------------------------------------------------------------- the cached recipes

def test_unknown_baseline_name_lists_the_choices():
    target, record = tiny_target()
    with pytest.raises(ValueError, match="Unknown baseline purifier 'hgd'.*ape_gan"):
        get_baseline("hgd", "shapes10", "smoke", target=target, target_record=record)
    with pytest.raises(ValueError, match="Unknown baseline"):
        baseline_settings("APE-GAN", "quick")


@pytest.mark.parametrize("name", ["comdefend", "ape_gan"])
def test_get_baseline_trains_once_then_loads_from_the_cache(tmp_path, name):
    target, record = tiny_target()
    cache = ModelCache(tmp_path)
    p1, r1 = get_baseline(name, "shapes10", "smoke", 0, target=target, target_record=record, cache=cache,
                          device="cpu", progress=False)
    assert not r1["cached"] and r1["metrics"]["train_seconds"] > 0
    p2, r2 = get_baseline(name, "shapes10", "smoke", 0, target=target, target_record=record, cache=cache,
                          device="cpu", progress=False)
    assert r2["cached"] and r2["path"] == r1["path"]
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(p1(x), p2(x))
    other = dict(record, hash="another-target")
    _, r3 = get_baseline(name, "shapes10", "smoke", 0, target=target, target_record=other, cache=cache,
                         device="cpu", progress=False)
    assert r3["path"] != r1["path"]  # a baseline is tied to the classifier it was trained for


def test_get_menet_returns_the_purifier_and_its_trained_classifier(tmp_path, shapes_model):
    target, _, _ = shapes_model
    record = {"hash": "shapes-model", "spec": {"arch": "resnet_small", "width": 8}}
    purifier, rec = get_baseline("menet", "shapes10", "smoke", 0, target=target, target_record=record,
                                 cache=ModelCache(tmp_path), device="cpu", progress=False)
    assert isinstance(purifier, menet.MENet)
    classifier = rec["classifier"]
    assert classifier is not target and not classifier.training
    assert any(not torch.equal(a, b) for a, b in zip(classifier.state_dict().values(), target.state_dict().values()))
    _, x, y = shapes_model
    assert clean_row(purifier, classifier, x, y)["accuracy"] > 0.3  # fine-tuned on ME-Net images: still a classifier


def test_every_baseline_has_settings_at_every_scale():
    for name in BASELINES:
        for scale in ("smoke", "quick", "paper"):
            settings = baseline_settings(name, scale)
            assert settings.n_train > 0 and settings.epochs > 0
