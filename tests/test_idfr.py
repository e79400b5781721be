"""IDFR (lib.defenses.idfr, idfr_setup): Table 6 / Table 7 sizes, the convex-combination sampler, the
encoder/head split, one training step of each model, and the cached getter at smoke."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lib.core.cache import ModelCache
from lib.defenses import idfr
from lib.defenses.idfr_setup import get_idfr, idfr_settings
from lib.models.classifiers import build_classifier

TABLE6_LAYERS = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (192, 192), (192, 64), (96, 96), (96, 3)]
TABLE7_LAYERS = [(512, 256), (256, 128), (128, 32), (32, 128), (128, 256), (256, 512)]


def test_input_denoiser_has_table_6_layers_and_keeps_the_image_contract():
    denoiser = idfr.InputDenoiser(3, width=1.0).eval()
    convs = [m for m in denoiser.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == TABLE6_LAYERS
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in denoiser.modules()) == 9
    x = torch.rand(2, 3, 16, 16)
    out = denoiser(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="3-channel"):
        denoiser(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError):
        denoiser(x * 255)  # 0-255 images are refused by the purifier contract


def test_feature_restorer_has_table_7_layers_and_scales_with_the_embedding():
    fr = idfr.FeatureRestorer(512, 10)
    linears = [m for m in fr.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == TABLE7_LAYERS
    assert sum(isinstance(m, nn.ReLU) for m in fr.modules()) == 6
    assert idfr.fr_widths(64, 10) == (32, 16, 10, 16, 32, 64)  # the bottleneck never below the class count
    assert fr(torch.rand(4, 512)).shape == (4, 512)


def test_convex_mix_stays_between_same_label_endpoints():
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    partner = idfr.same_label_partners(y, gen)
    assert torch.equal(y[partner], y) and sorted(partner.tolist()) == list(range(6))  # a permutation within labels
    assert partner[3] == 3  # the only label-2 row pairs with itself
    h = torch.randn(6, 8)
    assert torch.allclose(idfr.convex_mix(h, partner, torch.ones(6)), h)  # α = 1: h_x
    assert torch.allclose(idfr.convex_mix(h, partner, torch.zeros(6)), h[partner])  # α = 0: h_x̃
    alpha = torch.rand(6, generator=gen)
    mixed = idfr.convex_mix(h, partner, alpha)
    low, high = torch.minimum(h, h[partner]), torch.maximum(h, h[partner])
    assert ((mixed >= low - 1e-6) & (mixed <= high + 1e-6)).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        idfr.convex_mix(h, partner, torch.full((6,), 1.5))


def test_encoder_head_split_composes_back_to_the_classifier():
    target = build_classifier("resnet_small", "shapes10", 8).eval()
    x = torch.rand(4, 3, 32, 32)
    encoder, head = idfr.encoder_head(target)
    assert torch.equal(head(encoder(x)), target(x))
    restorer = idfr.FeatureRestorer(target.embedding_dim, 10)
    assert torch.equal(idfr.RestoredClassifier(target, restorer, restore=False)(x), target(x))
    restored = idfr.RestoredClassifier(target, restorer)(x)
    assert torch.equal(restored, target.linear(restorer(target.features(x))))
    with pytest.raises(TypeError, match="features"):
        idfr.encoder_head(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))


def _fixed_batch(n=32):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def test_one_training_step_of_each_model_lowers_its_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    s = idfr.IDFRSettings(width=0.125, train_eps=(8 / 255,), bim_steps=2, rounds=1, sigma=0.0, lr=1e-2)
    target = build_classifier("resnet_small", "shapes10", 8).eval().requires_grad_(False)
    x, y = _fixed_batch()
    denoiser = idfr.InputDenoiser(3, s.width)
    id_trainer = idfr.IDTrainer(denoiser, target, s, "cpu", seed=0)
    x_adv = idfr.training_examples(target, x, y, 8 / 255, s.bim_steps, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6

    def id_loss():
        denoiser.eval()
        with torch.no_grad():
            return nn.functional.cross_entropy(target(denoiser(torch.cat([x_adv, x]))), torch.cat([y, y])).item()

    before = id_loss()
    for _ in range(5):
        id_trainer.step(x, y)  # same batch, same ε, σ = 0: the same inputs each step
    assert id_loss() < before

    restorer = idfr.FeatureRestorer(target.embedding_dim, 10)
    fr_trainer = idfr.FRTrainer(restorer, denoiser.eval(), target, s, "cpu", seed=0)
    h, labels = fr_trainer.embeddings(x, y)

    def fr_loss():
        with torch.no_grad():
            return nn.functional.cross_entropy(target.linear(restorer(h)), labels).item()

    before = fr_loss()
    for _ in range(5):
        fr_trainer.step(x, y)
    assert fr_loss() < before


def test_get_idfr_trains_once_then_loads_and_leaves_the_target_unchanged(tmp_path):
    target = build_classifier("resnet_small", "shapes10", 8).eval()
    weights = {k: v.clone() for k, v in target.state_dict().items()}
    record_in = {"hash": "0123456789abcdef"}
    cache = ModelCache(tmp_path)
    denoiser, record = get_idfr("shapes10", "smoke", 0, target=target, target_record=record_in, device="cpu",
                                cache=cache, progress=False)
    assert not record["cached"] and not denoiser.training and not target.training
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in weights.items())  # the target is not trained
    assert record["fr"]["spec"]["id"] == record["id"]["hash"]
    assert len(record["metrics"]["id"]["epoch_losses"]) == idfr_settings("smoke").id_epochs
    x = torch.rand(3, 3, 32, 32)
    assert record["classifier"](denoiser(x)).shape == (3, 10)
    again, cached = get_idfr("shapes10", "smoke", 0, target=target, target_record=record_in, device="cpu",
                             cache=cache, progress=False)
    assert cached["cached"] and all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                                       denoiser.state_dict().values()))
    ablation = get_idfr("shapes10", "smoke", 0, target=target, target_record=record_in, device="cpu",
                        cache=cache, progress=False, restore=False)[1]["classifier"]
    assert torch.equal(ablation(x), target(x))
