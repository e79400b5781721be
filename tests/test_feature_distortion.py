"""The self-supervised feature-distortion attack (NRP's SSP, RDP's attack): one implementation in lib.attacks."""
import pytest
import torch

from lib.attacks.registry import ATTACKS, build_attack, run_attack
from lib.attacks.feature_distortion import feature_distortion
from lib.defenses.nrp import FeatureExtractor


def distortion(net, a, b):
    with torch.no_grad():
        return (net(a) - net(b)).pow(2).mean().item()


def test_stays_in_the_ball_and_distorts_features_far_more_than_noise(shapes_model):
    classifier, x, _ = shapes_model
    features = FeatureExtractor(classifier, depth=2)
    eps = 8 / 255
    adv = feature_distortion(features, x, eps=eps, steps=5, seed=0)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= eps + 1e-6
    noise = (x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1).sign() * eps).clamp(0, 1)
    assert distortion(features, adv, x) > 3 * distortion(features, noise, x)


def test_needs_no_labels_and_changes_predictions(shapes_model):
    classifier, x, _ = shapes_model
    adv = feature_distortion(classifier, x, eps=16 / 255, steps=10, seed=0)  # distorts the logits
    with torch.no_grad():
        changed = (classifier(adv).argmax(1) != classifier(x).argmax(1)).float().mean()
    assert changed > 0.3


def test_is_reproducible_from_a_seed_and_leaves_the_global_rng_alone(shapes_model):
    classifier, x, _ = shapes_model
    state = torch.random.get_rng_state()
    a = feature_distortion(classifier, x[:8], eps=8 / 255, steps=2, seed=1)
    b = feature_distortion(classifier, x[:8], eps=8 / 255, steps=2, seed=1)
    c = feature_distortion(classifier, x[:8], eps=8 / 255, steps=2, seed=2)
    assert torch.equal(state, torch.random.get_rng_state())
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_keeps_the_feature_networks_mode(shapes_model):
    classifier, x, _ = shapes_model
    classifier.train()
    try:
        feature_distortion(classifier, x[:4], eps=8 / 255, steps=1)
        assert classifier.training
    finally:
        classifier.eval()


def test_built_by_name_like_every_attack(shapes_model):
    classifier, x, y = shapes_model
    assert "feature_distortion" in ATTACKS
    attack = build_attack("feature_distortion", classifier, eps=8 / 255, steps=3)
    adv = run_attack(attack, x[:8], y[:8], seed=0)
    assert (adv - x[:8]).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(adv, x[:8])


@pytest.mark.parametrize("eps", [8, -0.1])
def test_rejects_eps_in_the_wrong_units(shapes_model, eps):
    classifier, x, _ = shapes_model
    with pytest.raises(ValueError, match="eps"):
        feature_distortion(classifier, x[:2], eps=eps, steps=1)


def test_rejects_images_outside_the_unit_range(shapes_model):
    classifier, x, _ = shapes_model
    with pytest.raises(ValueError, match=r"\[0, ?1\]"):
        feature_distortion(classifier, x[:2] * 255, eps=8 / 255, steps=1)
