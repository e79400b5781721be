"""IMPure (lib.defenses.impure): the subsets partition the patches, a subset's reconstruction never sees its
own patches, RCM's mask is patch-aligned, Eq. 15's terms and weights, and a training step lowers the loss."""
from __future__ import annotations

import pytest
import torch

from lib.defenses import impure
from lib.models.classifiers import build_classifier


def small_riae(size: int = 16, **kwargs) -> impure.RIAE:
    torch.manual_seed(0)
    options = dict(patch_size=4, dim=32, depth=1, heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    options.update(kwargs)
    riae = impure.RIAE(3, size, **options)
    torch.nn.init.normal_(riae.head.weight, std=0.05)  # a non-trivial decoder (the head starts at zero)
    return riae.eval()


def test_subsets_partition_the_patches_randomly_and_periodically():
    ids = impure.random_subsets(5, 64, 4, torch.Generator().manual_seed(0))
    assert ids.shape == (5, 64) and all(torch.equal(torch.bincount(row, minlength=4), torch.full((4,), 16)) for row in ids)
    assert not torch.equal(ids[0], ids[1])  # each image its own division
    grid = impure.periodic_subsets(8, 4).view(8, 8)
    assert torch.equal(grid[:2, :2], torch.tensor([[0, 1], [2, 3]])) and torch.equal(grid[2:4, 2:4], grid[:2, :2])
    assert torch.equal(torch.bincount(grid.flatten()), torch.full((4,), 16))
    with pytest.raises(ValueError, match="equal subsets"):
        impure.random_subsets(1, 10, 4, torch.Generator())


def test_a_subsets_reconstruction_never_sees_its_own_patches():
    riae = small_riae()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ids = riae.test_subsets.expand(2, -1)
    pixels = riae.patch_pixels(ids == 0)  # (2, 1, 16, 16): the patches of subset 0
    changed = (x + 0.3 * torch.randn_like(x) * pixels).clamp(0, 1)
    with torch.no_grad():
        before, after = riae.reconstruct_subsets(x, ids), riae.reconstruct_subsets(changed, ids)
    assert torch.allclose(before[:, 0], after[:, 0], atol=1e-6)  # subset 0 rebuilt from subsets 1-3 only
    assert not torch.allclose(before[:, 1], after[:, 1], atol=1e-4)  # the others do see subset 0
    with torch.no_grad():
        out = riae(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, riae(x)) and not riae.randomized  # the periodic division is deterministic


def test_purify_keeps_each_patch_from_its_own_subsets_pass_and_matches_the_full_decoder():
    # purify runs the last decoder block on the masked patches alone; it must equal reconstruct_subsets (every
    # position decoded) gathered at each patch's own subset, in values and in gradients
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    for riae in (small_riae(decoder_depth=2), small_riae(periodic=False, masking="image_feature_noise")):
        riae.train(not riae.periodic)  # the random division is drawn in training
        ids = riae.division(x)
        inputs = [x.clone().requires_grad_(True) for _ in range(2)]
        riae.reseed(5)
        expected = riae.purify_full_decoder(inputs[0], ids)
        riae.reseed(5)
        fast = riae.purify(inputs[1], ids)
        torch.testing.assert_close(fast, expected, atol=1e-5, rtol=1e-5)
        weights = torch.randn_like(fast)
        (expected * weights).sum().backward()
        (fast * weights).sum().backward()
        torch.testing.assert_close(inputs[1].grad, inputs[0].grad, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="together be all 16 patches"):
        riae.decode_masked(torch.zeros(1, 4, 32), torch.arange(4)[None], torch.arange(4, 8)[None])


def test_random_divisions_and_noise_maskings_make_it_random_and_repeatable_after_reseed():
    x = torch.rand(2, 3, 16, 16)
    for riae in (small_riae(periodic=False), small_riae(masking="image_feature_noise")):
        assert riae.randomized
        with torch.no_grad():
            first = riae.reseed(3)(x)
            assert torch.equal(riae.reseed(3)(x), first) and not torch.equal(riae(x), first)
    with pytest.raises(ValueError, match="masking"):
        small_riae(masking="blur")


def test_rcm_mask_is_patch_aligned_and_mixes_both_images():
    riae = small_riae()
    u = impure.rcm_mask(64, riae, torch.Generator().manual_seed(0))
    assert u.shape == (64, 1, 16, 16) and set(u.unique().tolist()) <= {0.0, 1.0}
    blocks = u.unfold(2, 4, 4).unfold(3, 4, 4)  # (N, 1, 4, 4, 4, 4): one 4 × 4 block per patch
    assert (blocks.amin((-1, -2)) == blocks.amax((-1, -2))).all()
    assert 0.3 < u.mean() < 0.7 and (u.flatten(1).mean(1) > 0).any() and (u.flatten(1).mean(1) < 1).any()
    a, b = torch.zeros(64, 3, 16, 16), torch.ones(64, 3, 16, 16)
    assert torch.equal(impure.combine(a, b, u), (1 - u).expand(-1, 3, -1, -1))


def test_loss_terms_and_weights_and_a_training_step_lowers_the_loss():
    network = build_classifier("vgg16", "shapes10", 8).eval()
    riae = small_riae(32)  # lib's VGG pools five times: 32 × 32 images
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x_adv = (x + 8 / 255 * torch.randn_like(x).sign()).clamp(0, 1)
    terms = impure.impure_loss(x_adv, x_adv, x, network, weights=(30.0, 10.0, 5.0))
    expected = terms["pixel"] + 30 * terms["perceptual_0"] + 10 * terms["perceptual_1"] + 5 * terms["perceptual_2"]
    assert torch.allclose(terms["loss"], expected)
    assert impure.impure_loss(x, x, x, network)["loss"].item() == pytest.approx(0.0, abs=1e-6)
    settings = impure.IMPureSettings(lr=3e-3, weights=(1.0, 1.0, 1.0))
    trainer = impure.IMPureTrainer(riae, network, settings, total_steps=1000)
    first = trainer.step(x, x_adv)
    for _ in range(40):
        last = trainer.step(x, x_adv)
    assert last["pixel"] < first["pixel"] and not network.training


def test_training_pairs_keep_only_correct_images_split_the_attacks_and_respect_eps():
    from lib.core.data import ImageData
    from lib.defenses.impure_setup import training_pairs

    torch.manual_seed(0)
    target = build_classifier("resnet_small", "shapes10", 4).eval()
    x = torch.rand(30, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    images = (x * 255).round().to(torch.uint8)
    with torch.no_grad():
        predicted = target(images.float() / 255).argmax(1)
    labels = torch.where(torch.arange(30) < 21, predicted, (predicted + 1) % 10)  # 21 right, 9 wrong
    settings = impure.IMPureSettings(attack_steps=2)
    pairs = training_pairs(target, ImageData("shapes10", "train", images, labels, tuple("0123456789")), settings,
                           device="cpu", progress=False)
    assert len(pairs) == 21 and torch.equal(pairs.clean, images[:21]) and torch.equal(pairs.labels, labels[:21])
    assert torch.bincount(pairs.attack).tolist() == [7, 7, 7] and pairs.attack_names == ("fgsm", "pgd", "mifgsm")
    moved = (pairs.adversarial.int() - pairs.clean.int()).abs()
    assert moved.max() <= 16 and (moved > 0).float().mean() > 0.5 and not target.training


def test_get_impure_checks_its_options_before_any_work():
    from lib.defenses.impure_setup import get_impure

    with pytest.raises(ValueError, match="masking='blur'"):
        get_impure(target=None, target_record=None, masking="blur")
    with pytest.raises(ValueError, match="train_attacks=.*unknown: \\['pgdd'\\]"):
        get_impure(target=None, target_record=None, train_attacks=["pgdd"])


def test_weight_scale_multiplies_every_lambda_and_the_warmup_ramps_the_lr():
    network = build_classifier("vgg16", "shapes10", 8).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    x_adv = (x + 8 / 255 * torch.randn_like(x).sign()).clamp(0, 1)
    losses = {}
    for scale in (0.0, 1e-3):
        trainer = impure.IMPureTrainer(small_riae(32), network,
                                       impure.IMPureSettings(weight_scale=scale, warmup_steps=10), total_steps=100)
        trainer.schedule(0, 100)
        assert trainer.opt.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.1)  # step 1 of 10
        trainer.schedule(50, 100)
        assert trainer.opt.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.5)  # past the warm-up: the cosine alone
        losses[scale] = trainer.step(x, x_adv)
    assert losses[0.0]["loss"] == pytest.approx(losses[0.0]["pixel"])  # λ × 0: the pixel loss alone
    perceptual = sum(w * losses[1e-3][f"perceptual_{i}"] for i, w in enumerate((30.0, 10.0, 5.0)))
    assert losses[1e-3]["loss"] == pytest.approx(losses[1e-3]["pixel"] + 1e-3 * perceptual, rel=1e-5)
    with pytest.raises(ValueError, match="weight_scale"):
        impure.IMPureSettings(weight_scale=-1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        impure.IMPureSettings(warmup_steps=-5)
