"""IDFR's two extra baselines: ADP (lib.defenses.adp: a DSM score model and noise-injection purification) and
SOAP-LC (lib.defenses.soap: a label-consistency auxiliary loss minimised at test time)."""
from __future__ import annotations

import pytest
import torch

from lib.core.cache import ModelCache
from lib.core.settings import get_scale
from lib.defenses import adp, soap
from lib.defenses.baselines import get_baseline
from lib.models.classifiers import build_classifier
from lib.models.recipes import recipe_for
from lib.models.zoo import get_classifier


def smooth_images(n: int, side: int = 16, seed: int = 0) -> torch.Tensor:
    """Low-frequency images inside (0.2, 0.8): learnable in a few steps and far from the clamp."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    return 0.2 + 0.6 * torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)


def small_adp(**kwargs) -> adp.ADP:
    return adp.build(adp.SETTINGS["smoke"], 3, **kwargs)


# ------------------------------------------------------------------------------------------------- ADP

def test_dsm_loss_is_the_score_matching_objective_of_the_denoiser_score():
    purifier = small_adp()
    torch.nn.init.normal_(purifier.denoiser.head.weight, std=0.1)  # a non-trivial score
    x, sigma = smooth_images(8), 0.02  # no pixel reaches the clamp at this σ
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).clamp(-3, 3)
    noisy = x + sigma * noise
    assert noisy.min() > 0 and noisy.max() < 1
    # DSM: E‖s(x̃) + n/σ‖², times σ⁴, is the denoising error of D(x̃) = x̃ + σ² s(x̃)
    dsm = (purifier.score(noisy, sigma) + noise / sigma).pow(2).mean() * sigma ** 4
    assert adp.dsm_loss(purifier, x, torch.full((8,), sigma), noise).item() == pytest.approx(dsm.item(), rel=1e-4)


def test_untrained_adp_only_injects_noise_and_reseeding_repeats_it():
    purifier = small_adp(seed=3).eval()  # zero-initialised output: D is the identity, every update a no-op
    x = smooth_images(4)
    out = purifier(x)
    expected = (x + purifier.sigma_inject * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(purifier.reseed(3)(x), out)
    assert not torch.equal(purifier.reseed(4)(x), out)


def test_dsm_training_lowers_the_denoising_error_and_purification_moves_towards_the_clean_image():
    torch.manual_seed(0)
    settings = adp.ADPSettings(widths=(8, 16), depths=(1, 1), decoder_widths=(8,), decoder_depths=(1,), steps=3,
                               step_fraction=0.5, epochs=1, batch_size=16, lr=3e-3)
    purifier = adp.build(settings, 3)
    x = smooth_images(16)
    before = adp.denoising_error(purifier, x, settings.sigma_inject)
    trainer = adp.DSMTrainer(purifier, settings, "cpu", seed=0)
    for _ in range(60):
        trainer.step(x)
    purifier.eval()
    after = adp.denoising_error(purifier, x, settings.sigma_inject)
    assert after < 0.5 * before
    noisy_distance = ((x + settings.sigma_inject * torch.randn_like(x)).clamp(0, 1) - x).pow(2).mean()
    with torch.no_grad():
        assert (purifier(x) - x).pow(2).mean() < noisy_distance  # the score steps undo part of the injected noise
    assert not purifier.training


def test_adp_settings_refuse_what_would_not_purify():
    with pytest.raises(ValueError, match="sigma_max"):
        adp.ADPSettings(sigma_inject=0.6, sigma_max=0.5)
    with pytest.raises(ValueError, match="steps"):
        adp.ADPSettings(steps=0)
    with pytest.raises(ValueError, match="step_fraction"):
        adp.ADPSettings(step_fraction=1.5)


# ------------------------------------------------------------------------------------------------ SOAP

def test_views_keep_the_image_contract_and_the_test_time_view_is_fixed():
    x = smooth_images(6, side=32)
    gen = torch.Generator().manual_seed(0)
    view = soap.random_view(x, 0.1, gen)
    assert view.shape == x.shape and view.min() >= 0 and view.max() <= 1
    assert not torch.equal(view, soap.random_view(x, 0.1, gen))  # a fresh draw each call
    assert torch.equal(soap.fixed_view(x), soap.fixed_view(x))
    flat = torch.full((2, 3, 32, 32), 0.4)
    assert torch.allclose(soap.fixed_view(flat), flat)  # flip + crop + resize of a constant image is itself


def test_purification_lowers_the_auxiliary_loss_within_its_largest_radius():
    torch.manual_seed(0)
    classifier = build_classifier("resnet_small", "shapes10", 8).eval()
    purifier = soap.SOAP(classifier, delta=2 / 255, radii=4, purify_steps=3, step_size=1 / 255)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # flip and crop change these
    before = purifier.aux_loss(x).detach()
    out = purifier(x)
    after = purifier.aux_loss(out).detach()
    assert (after <= before + 1e-7).all()  # radius 0 (x itself) is always a candidate
    assert (after < before).float().mean() >= 0.75  # and descending the loss usually wins
    assert (out - x).abs().max() <= 3 * 2 / 255 + 1e-6
    assert not classifier.training and not out.requires_grad


def test_soap_training_step_lowers_the_joint_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_classifier("resnet_small", "shapes10", 8)
    recipe = recipe_for("natural", get_scale("smoke"), lr=0.05)
    settings = soap.SOAPSettings(view_noise=0.0)
    trainer = soap.SOAPTrainer(model, recipe, settings, total_steps=100, seed=0)
    x, y = smooth_images(32, side=32), torch.arange(32) % 10
    first = trainer.step(x, y)
    for _ in range(25):
        last = trainer.step(x, y)
    assert last["ce"] < first["ce"] and last["loss"] < first["loss"]
    assert {"loss", "ce", "lc", "accuracy"} <= set(last)
    with pytest.raises(ValueError, match="natural"):
        soap.SOAPTrainer(model, recipe_for("pgd_at", get_scale("smoke")), settings, total_steps=1)


def test_cached_getters_train_once_and_soap_brings_its_own_classifier(tmp_path):
    cache = ModelCache(tmp_path)
    target, record = get_classifier("shapes10", "natural", "smoke", 0, device="cpu", cache=cache, progress=False)
    purifier, soap_record = get_baseline("soap", "shapes10", "smoke", 0, target=target, target_record=record,
                                         device="cpu", cache=cache, progress=False)
    assert soap_record["classifier"] is purifier.classifier and soap_record["classifier"] is not target
    assert soap_record["spec"]["settings"]["arch"] == record["spec"]["arch"]
    again, again_record = get_baseline("soap", "shapes10", "smoke", 0, target=target, target_record=record,
                                       device="cpu", cache=cache, progress=False)
    assert again_record["cached"] and not soap_record["cached"]
    adp_purifier, adp_record = get_baseline("adp", "shapes10", "smoke", 0, target=target, target_record=record,
                                            device="cpu", cache=cache, progress=False)
    assert adp_purifier.randomized and adp_record["metrics"]["denoising_mse_at_inject"] > 0
