"""Tests for lib.defenses.dir_denoiser: complementary masks, the MAE-style DIR denoiser, its losses, training, the cached
`get_dir`, the Appendix A discard helpers and the mask-aware attack."""
import dataclasses

import pytest
import torch

from lib.defenses import dir_denoiser as dir_
from lib.core.cache import ModelCache
from lib.models.classifiers import build_classifier
from lib.core.purifiers import is_differentiable, is_randomized
from lib.attacks import adaptive
from lib.eval import analyses
from lib.defenses import dir_setup
from lib.attacks import pgd

SMOKE = dir_.dir_settings("smoke")


def tiny_target(dataset: str = "shapes10"):
    torch.manual_seed(0)
    model = build_classifier("resnet_small", dataset, width=4).eval()
    record = {"hash": "t", "spec": {"arch": "resnet_small", "width": 4}}
    return model, record


def small_denoiser(channels: int = 3, image_size: int = 32, **kwargs) -> dir_.DIRDenoiser:
    """A one-block quick-width denoiser with a random pixel head (it starts at zero: every output 0.5)."""
    torch.manual_seed(0)
    d = dir_.build_denoiser(dir_.dir_settings("quick"), channels, image_size, depth=1, **kwargs)
    torch.nn.init.normal_(d.head.weight, std=0.05)
    return d


def test_untrained_denoiser_outputs_gray():
    d = dir_.build_denoiser("smoke", 3, 32).eval()
    with torch.no_grad():
        torch.testing.assert_close(d(torch.rand(2, 3, 32, 32)), torch.full((2, 3, 32, 32), 0.5))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- masks

def test_two_masks_at_half_partition_the_patches():
    masks = dir_.complementary_masks(16, 8, 8, 2, 0.5, gen())
    assert masks.shape == (16, 2, 64) and masks.dtype == torch.bool
    assert (masks.sum(2) == 32).all()
    assert (masks.sum(1) == 1).all()  # every patch visible in exactly one of the two masks
    assert not (masks[0] == masks[1]).all()  # a fresh permutation per image


@pytest.mark.parametrize("ratio, n_patches, k", [(0.3, 64, 2), (0.5, 64, 2), (0.7, 64, 4), (0.3, 256, 2),
                                                  (0.7, 256, 4), (0.5, 4, 2)])
def test_covering_rule_for_the_ablation_ratios(ratio, n_patches, k):
    n_visible = dir_.visible_per_mask(n_patches, ratio)
    assert n_visible == round((1 - ratio) * n_patches)
    assert dir_.covering_k(n_patches, ratio) == k
    side = int(n_patches ** 0.5)
    masks = dir_.complementary_masks(8, side, side, k, ratio, gen())
    assert (masks.sum(2) == n_visible).all()
    per_patch = masks.sum(1)
    assert per_patch.min() >= 1  # every patch seen by some mask
    assert per_patch.max() - per_patch.min() <= 1  # ... and coverage is balanced
    assert per_patch.sum(1).eq(k * n_visible).all()


def test_masks_come_only_from_the_generator():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = dir_.complementary_masks(4, 4, 4, 2, 0.5, gen(7))
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    torch.manual_seed(999)
    assert torch.equal(a, dir_.complementary_masks(4, 4, 4, 2, 0.5, gen(7)))
    assert not torch.equal(a, dir_.complementary_masks(4, 4, 4, 2, 0.5, gen(8)))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_open_unit_interval_is_an_error(ratio):
    with pytest.raises(ValueError, match="between 0 and 1"):
        dir_.complementary_masks(2, 4, 4, 2, ratio, gen())
    with pytest.raises(ValueError, match="between 0 and 1"):
        small_denoiser(mask_ratio=ratio)


def test_too_few_masks_is_an_error():
    with pytest.raises(ValueError, match="at least 1"):
        dir_.complementary_masks(2, 4, 4, 0, 0.5, gen())
    with pytest.raises(ValueError, match="k >= 4"):
        dir_.complementary_masks(2, 8, 8, 2, 0.7, gen())
    with pytest.raises(ValueError, match="k >= 2"):
        small_denoiser(k=1)


# ------------------------------------------------------------------------------------------------- denoiser

@pytest.mark.parametrize("channels, size", [(3, 32), (1, 8)])
def test_denoiser_maps_images_to_images(channels, size):
    d = small_denoiser(channels, size).eval()
    assert is_randomized(d) and is_differentiable(d) and d.k == 2
    x = torch.rand(5, channels, size, size)
    with torch.no_grad():
        out = d(x)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1


def test_paper_architecture_matches_the_public_code():
    d = dir_.build_denoiser("paper", 3, 32)
    assert (d.patch_size, d.n_patches, d.k, d.n_visible) == (2, 256, 2, 128)
    assert len(d.blocks) == 8 and len(d.decoder_blocks) == 2 and d.pos_embed.shape == (1, 256, 192)


def test_restored_is_the_mean_of_the_reconstructions_of_its_masks():
    d = small_denoiser().eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        out = d.reseed(5)(x)
        masks = d.reseed(5).draw_masks(x)
        per_mask = [d.reconstruct(x, masks[:, j:j + 1])[:, 0] for j in range(d.k)]
    torch.testing.assert_close(out, torch.stack(per_mask).mean(0).clamp(0, 1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(per_mask[0], per_mask[1])  # different masks, different reconstructions


def test_encoder_sees_only_the_visible_patches():
    d = small_denoiser().eval()
    x = torch.rand(1, 3, 32, 32)
    masks = d.draw_masks(x)[:, :1]
    visible = masks[0, 0].view(8, 8).repeat_interleave(4, 0).repeat_interleave(4, 1)
    changed = torch.where(visible, x, torch.rand_like(x))  # new pixels only where the mask hides them
    with torch.no_grad():
        torch.testing.assert_close(d.reconstruct(x, masks), d.reconstruct(changed, masks), atol=1e-5, rtol=1e-5)


def test_randomness_uses_own_generator_and_reseed_repeats():
    d = small_denoiser().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(0)
        a = d.reseed(1)(x)
        torch.manual_seed(0)
        b = d(x)  # next draw of its own generator: different masks even though the global RNG was reset
        torch.manual_seed(42)
        c = d.reseed(1)(x)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, c)


def test_gradients_flow_to_the_input():
    d = small_denoiser().eval()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    d(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_inputs_are_clear_errors():
    d = small_denoiser()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        d(torch.rand(2, 3, 32, 32) * 255)
    with pytest.raises(ValueError, match="takes"):
        d(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="masks must be bool"):
        d.reconstruct(torch.rand(2, 3, 32, 32), torch.ones(2, 2, 64))


# --------------------------------------------------------------------------------------------------- losses

def fixed_batch(n: int = 8):
    from lib.core.data import load_dataset
    x, y = load_dataset("shapes10", "test").subset(n, 0).tensors()
    noise = (torch.rand(x.shape, generator=gen(1)) * 2 - 1) * 8 / 255
    return x, (x + noise).clamp(0, 1), y


def steps_lower(loss_fn, params, n: int = 8, lr: float = 0.05) -> tuple[float, float]:
    opt = torch.optim.Adam(params, lr=lr)
    first = None
    for _ in range(n):
        loss = loss_fn()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, loss_fn().item()


def test_pretrain_loss_is_the_mean_mse_of_each_reconstruction_and_decreases():
    d = small_denoiser().train()
    x, x_adv, _ = fixed_batch()
    masks = d.draw_masks(x_adv)
    recon = d.reconstruct(x_adv, masks)
    expected = sum(((recon[:, j] - x) ** 2).mean() for j in range(d.k)) / d.k
    torch.testing.assert_close(dir_.pretrain_loss(d, x_adv, x, masks), expected)
    first, last = steps_lower(lambda: dir_.pretrain_loss(d, x_adv, x, masks), d.parameters(), lr=3e-3)
    assert last < 0.7 * first


def test_adversarial_loss_is_cross_entropy_and_training_lowers_it():
    target, _ = tiny_target()
    target.requires_grad_(False)
    d = small_denoiser().train()
    x, x_adv, y = fixed_batch()
    restored = d.reseed(0)(x_adv)
    torch.testing.assert_close(dir_.adversarial_loss(target, restored, y),
                               torch.nn.functional.cross_entropy(target(restored), y))
    first, last = steps_lower(lambda: dir_.adversarial_loss(target, d.reseed(0)(x_adv), y), d.parameters(),
                              n=5, lr=3e-3)
    assert last < first


def test_kl_perturbation_stays_in_budget_and_raises_the_kl():
    target, _ = tiny_target()
    x, _, _ = fixed_batch()
    eps = 8 / 255
    delta = dir_.kl_perturbation(target, x, eps, steps=5, step_size=2 / 255, generator=gen(3))
    assert delta.abs().max() <= eps + 1e-6
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1
    with torch.no_grad():
        start = dir_.representation_loss(target, x, 0.001 * torch.randn(x.shape, generator=gen(3)))
        found = dir_.representation_loss(target, x, delta)
    assert found > 10 * start and found > 0
    # zero perturbation: zero KL
    assert dir_.representation_loss(target, x, torch.zeros_like(x)).abs() < 1e-6


def test_representation_loss_gradient_reaches_the_denoiser_and_training_lowers_it():
    target, _ = tiny_target()
    target.requires_grad_(False)
    d = small_denoiser().train()
    x, x_adv, _ = fixed_batch()
    delta = dir_.kl_perturbation(target, d.reseed(0)(x_adv), steps=3, generator=gen(0))

    def loss():
        return dir_.representation_loss(target, d.reseed(0)(x_adv), delta)

    first, last = steps_lower(loss, d.parameters(), n=5, lr=3e-3)
    assert last < first


def test_dir_loss_combines_the_terms_with_alpha():
    target, _ = tiny_target()
    d = small_denoiser().eval()
    x, x_adv, y = fixed_batch(4)
    terms = {a: dir_.dir_loss(d.reseed(0), target, x_adv, y, alpha=a, rep_steps=1, generator=gen(0))
             for a in (0.0, 2.0)}
    torch.testing.assert_close(terms[0.0]["loss"], terms[0.0]["adv"])
    torch.testing.assert_close(terms[2.0]["loss"], terms[2.0]["adv"] + 2 * terms[2.0]["rep"])
    torch.testing.assert_close(terms[0.0]["adv"], terms[2.0]["adv"])  # same masks after reseed


def test_training_pgd_stays_in_the_ball_and_raises_the_loss():
    target, _ = tiny_target()
    x, _, y = fixed_batch()
    adv = pgd.pgd_linf(target, x, y, eps=8 / 255, steps=5, step_size=2 / 255, generator=gen(0))
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    ce = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert ce(target(adv), y) > ce(target(x), y)


# ------------------------------------------------------------------------------------ training and caching

def test_get_dir_trains_once_then_loads(tmp_path):
    target, record = tiny_target()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    cache = ModelCache(tmp_path)
    d1, r1 = dir_setup.get_dir("shapes10", "smoke", 0, target=target, target_record=record, device="cpu", cache=cache,
                          progress=False)
    assert not r1["cached"] and r1["spec"]["target"] == "t" and r1["spec"]["k"] == 2
    assert len(r1["metrics"]["pretrain_epoch_losses"]) == SMOKE.pretrain_epochs
    assert len(r1["metrics"]["epoch_adv_losses"]) == SMOKE.epochs
    for k, v in target.state_dict().items():  # the target is held fixed
        torch.testing.assert_close(v, before[k])
    d2, r2 = dir_setup.get_dir("shapes10", "smoke", 0, target=target, target_record=record, device="cpu", cache=cache,
                          progress=False)
    assert r2["cached"] and r2["path"] == r1["path"]
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(d1.reseed(4)(x), d2.reseed(4)(x))
    # anything that determines the model changes the spec
    other = dict(record, hash="u")
    _, r3 = dir_setup.get_dir("shapes10", "smoke", 0, target=target, target_record=other, mask_ratio=0.7, device="cpu",
                         cache=cache, progress=False)
    assert r3["path"] != r1["path"] and r3["spec"]["k"] == 4
    with pytest.raises(ValueError, match="between 0 and 1"):
        dir_setup.get_dir("shapes10", "smoke", 0, target=target, target_record=record, mask_ratio=1.2, cache=cache)


def test_dir_loss_at_alpha_zero_skips_the_game():
    target, _ = tiny_target()
    d = small_denoiser().eval()
    _, x_adv, y = fixed_batch(4)
    g = gen(0)
    state = g.get_state()
    terms = dir_.dir_loss(d.reseed(0), target, x_adv, y, alpha=0.0, generator=g)
    assert terms["rep"].item() == 0.0
    assert torch.equal(g.get_state(), state)  # no δ was drawn


def test_adversarially_trained_baseline_changes_a_copy_and_is_cached(tmp_path):
    target, record = tiny_target()
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Sigmoid())
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cache = ModelCache(tmp_path)
    tuned, r1 = dir_setup.get_adversarially_trained("toy", base, {"hash": "b"}, "shapes10", "smoke", 0, target=target,
                                               target_record=record, device="cpu", cache=cache, progress=False)
    assert not r1["cached"] and r1["spec"]["base_hash"] == "b" and r1["spec"]["target"] == "t"
    assert r1["metrics"]["epoch_rep_losses"] == [0.0]  # α = 0: adversarial training alone
    for k, v in base.state_dict().items():  # the baseline itself is untouched ...
        assert torch.equal(v, before[k])
    assert not torch.equal(tuned[0].weight.cpu(), before["0.weight"])  # ... its copy is trained
    again, r2 = dir_setup.get_adversarially_trained("toy", base, {"hash": "b"}, "shapes10", "smoke", 0, target=target,
                                               target_record=record, device="cpu", cache=cache, progress=False)
    assert r2["cached"] and torch.equal(again[0].weight, tuned[0].weight)


# --------------------------------------------------------------------------- Appendix A and the Eq. 8 attack

def test_discard_noise_keeps_the_rest_of_the_noise():
    x, x_adv, _ = fixed_batch(4)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    out = analyses.discard_noise(x, x_adv, 0.25, gen(0))
    assert torch.equal(torch.get_rng_state(), state)
    noise, kept = x_adv - x, out - x
    same = (kept - noise).abs().amax(1) < 1e-6  # positions (all channels) where the noise is kept
    zero = kept.abs().amax(1) < 1e-7
    assert (same | zero).all()
    discarded = (~same).float().mean((1, 2))  # positions where noise was dropped (noise is nonzero almost surely)
    torch.testing.assert_close(discarded, torch.full((4,), 0.25), atol=0.01, rtol=0)
    torch.testing.assert_close(analyses.discard_noise(x, x_adv, 0.0, gen(0)), x_adv)
    torch.testing.assert_close(analyses.discard_noise(x, x_adv, 1.0, gen(0)), x)
    with pytest.raises(ValueError, match="fraction"):
        analyses.discard_noise(x, x_adv, 1.5, gen(0))


def test_discard_pixels_zeroes_a_fraction_of_positions():
    x = torch.rand(2, 3, 8, 8) * 0.9 + 0.1
    out = analyses.discard_pixels(x, 0.5, gen(0))
    zero = (out == 0).all(1)
    assert (zero.sum((1, 2)) == 32).all()
    assert torch.equal(out[~zero.unsqueeze(1).expand_as(x)], x[~zero.unsqueeze(1).expand_as(x)])


def test_mask_aware_attack_uses_the_known_masks():
    target, _ = tiny_target()
    d = small_denoiser().eval()
    x, _, y = fixed_batch(4)
    x_adv, masks = adaptive.mask_aware_attack(d, target, x, y, eps=8 / 255, steps=3, generator=gen(0))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert masks.shape == (4, 2, 64)
    ce = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert ce(target(d.restore(x_adv, masks)), y) > ce(target(d.restore(x, masks)), y)


def test_optimizer_follows_the_settings():
    d = small_denoiser()
    paper, quick = dir_.dir_settings("paper"), dir_.dir_settings("quick")
    sgd = dir_._optimizer(d, paper, paper.lr)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9  # Section 4.1
    adamw = dir_._optimizer(d, quick, quick.lr)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.95)
    with pytest.raises(ValueError, match="Unknown optimizer 'adam'"):
        dir_._optimizer(d, dataclasses.replace(quick, optimizer="adam"), 1e-3)


def test_restored_image_is_clamped_in_training_too():
    d = small_denoiser().train()
    with torch.no_grad():
        d.head.bias.fill_(5.0)  # every reconstruction far above 1
    x = torch.rand(2, 3, 32, 32)
    out = d(x)
    assert out.max() <= 1 and out.min() >= 0


def test_mask_pixels_expands_each_visible_patch_to_its_pixels():
    d = small_denoiser()
    x = torch.rand(2, 3, 32, 32)
    masks = d.draw_masks(x)
    pixels = d.mask_pixels(masks)
    assert pixels.shape == (2, d.k, 1, 32, 32)
    p = d.patch_size
    # the patch grid read back from the pixel mask (one pixel per patch) is the patch mask
    assert torch.equal(pixels[:, :, 0, ::p, ::p].flatten(2).bool(), masks)
    assert torch.equal(pixels.sum(1), torch.ones(2, 1, 32, 32))  # K = 2 at 50%: every pixel in exactly one mask
