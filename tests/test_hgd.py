"""Tests for lib.defenses.hgd: the DAE and DUNET denoisers, the four objectives, the Table 1 training-set recipe,
training and the cached `get_hgd`."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.defenses import hgd
from lib.core.cache import ModelCache
from lib.models.classifiers import build_classifier
from lib.attacks import attack_sets
from lib.defenses import hgd_setup
from lib.eval import stored_sets

SMOKE = hgd.hgd_settings("smoke")


def small(arch: str) -> hgd.Denoiser:
    torch.manual_seed(0)
    return hgd.build_denoiser(arch, 3, SMOKE)


# ---------------------------------------------------------------------------------------------- denoisers

@pytest.mark.parametrize("size", [(32, 32), (299, 299), (37, 29)])
def test_dunet_shapes_at_cifar_imagenet_and_odd_sizes(size):
    d = small("dunet").eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        out = d(x)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1


def randomise_head(d: hgd.Denoiser) -> hgd.Denoiser:
    """DUNET's output conv starts at zero; give it trained-looking weights."""
    torch.manual_seed(2)
    nn.init.normal_(d.head.weight, std=0.05)
    nn.init.normal_(d.head.bias, std=0.01)
    return d


def test_dunet_is_residual_x_hat_equals_x_minus_predicted_noise():
    d = small("dunet").eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(d(x), x)  # the output conv starts at zero: an untrained DUNET is the identity
        randomise_head(d)
        assert d.noise(x).abs().max() > 1e-3
        torch.testing.assert_close(d(x), (x - d.noise(x)).clamp(0, 1))


def test_training_mode_clamps_values_but_passes_gradients():
    d = randomise_head(small("dunet"))
    with torch.no_grad():
        d.head.bias.fill_(-2.0)  # every pixel far below 0 before the clamp
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    out = d.train()(x)
    assert out.min() >= 0 and out.max() <= 1
    out.sum().backward()
    assert d.head.bias.grad.abs().sum() > 0  # an exact clamp would give zero here
    torch.testing.assert_close(out.detach(), d.eval()(x).detach())


def test_dunet_has_lateral_connections_and_dae_does_not():
    dunet, dae = small("dunet"), small("dae")
    # the first conv of each feedback block reads the upsampled feedback (+ the lateral input for DUNET)
    dunet_in = [block[0][0].in_channels for block in dunet.decoder]
    dae_in = [block[0][0].in_channels for block in dae.decoder]
    w, dw = SMOKE.widths, SMOKE.decoder_widths
    assert dunet_in == [w[4] + w[3], dw[3] + w[2], dw[2] + w[1], dw[1] + w[0]]
    assert dae_in == [w[4], dw[3], dw[2], dw[1]]
    # Section 3.1.2: the feedforward path is C2 and four C3 whose first conv has stride 2 (paper depths)
    paper = hgd.build_denoiser("dunet", 3, "paper")
    assert [len(stage) for stage in paper.encoder] == [2, 3, 3, 3, 3]
    assert [stage[0][0].stride for stage in paper.encoder] == [(1, 1)] + [(2, 2)] * 4
    assert [len(block) for block in paper.decoder] == [3, 3, 3, 2]  # top to bottom: three C3, one C2


def test_dae_reconstructs_the_image_instead_of_a_residual():
    d = small("dae").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        d.head.weight.zero_()
        d.head.bias.fill_(0.25)
        torch.testing.assert_close(d(x), torch.full_like(x, 0.25))
        assert d(torch.rand(1, 3, 37, 29)).shape == (1, 3, 37, 29)


@pytest.mark.parametrize("arch", hgd.ARCHITECTURES)
def test_gradient_flows_to_input_and_every_parameter(arch):
    d = randomise_head(small(arch)).train()
    x = (torch.rand(2, 3, 32, 32) * 0.5 + 0.25).requires_grad_(True)
    out = d(x)
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in d.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_denoiser_is_a_deterministic_differentiable_purifier():
    d = small("dunet")
    assert d.differentiable and not d.randomized
    with pytest.raises(ValueError, match="Unknown denoiser"):
        hgd.build_denoiser("unet3d")


# ---------------------------------------------------------------------------------------------- objectives

class TinyConvNet(nn.Module):
    """A conv stage then a linear classifier, exposing `.layers` like lib.models.classifiers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.linear = nn.Linear(4, 3)

    @property
    def layers(self):
        return [self.conv, self.linear]

    def forward(self, x):
        return self.linear(self.conv(x).mean((2, 3)))


def test_pixel_guided_loss_value_and_gradient():
    x = torch.zeros(1, 1, 2, 2)
    x_hat = torch.tensor([[[[0.1, -0.3], [0.0, 0.6]]]], requires_grad=True)
    loss = hgd.pixel_guided_loss(x_hat, x)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    torch.testing.assert_close(x_hat.grad, torch.tensor([[[[0.25, -0.25], [0.0, 0.25]]]]))


def test_logits_guided_loss_on_a_linear_classifier():
    clf = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        clf[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]]))
    x = torch.rand(1, 1, 2, 2)
    delta = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]]]])
    x_hat = (x + delta).requires_grad_(True)
    loss = hgd.logits_guided_loss(clf, x_hat, x)
    assert loss.item() == pytest.approx((0.1 + 2 * 0.2) / 2)  # mean |W δ|
    loss.backward()
    torch.testing.assert_close(x_hat.grad, torch.tensor([[[[0.5, 1.0], [0.0, 0.0]]]]))
    assert hgd.logits_guided_loss(clf, x, x).item() == 0


def test_feature_guided_loss_uses_the_top_conv_map_and_only_differentiates_x_hat():
    clf = TinyConvNet().eval()
    assert hgd.top_conv_layer(clf) is clf.conv
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    x_hat = (x.detach() + 0.05 * torch.randn(2, 3, 8, 8)).requires_grad_(True)
    loss = hgd.feature_guided_loss(clf, x_hat, x)
    expected = (clf.conv(x_hat) - clf.conv(x)).abs().mean()
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert x_hat.grad.abs().sum() > 0 and x.grad is None
    assert hgd.feature_guided_loss(clf, x.detach(), x.detach()).item() == 0


def test_class_guided_loss_is_the_targets_cross_entropy():
    clf = TinyConvNet().eval()
    x_hat = torch.rand(3, 3, 8, 8, requires_grad=True)
    y = torch.tensor([0, 2, 1])
    loss = hgd.class_guided_loss(clf, x_hat, y)
    torch.testing.assert_close(loss, F.cross_entropy(clf(x_hat), y))
    loss.backward()
    assert x_hat.grad.abs().sum() > 0


def test_top_conv_layer_of_the_cifar_resnet_is_its_last_stage():
    clf = build_classifier("resnet_small", "shapes10", width=4)
    assert hgd.top_conv_layer(clf) is clf.stages[-1]


def test_denoiser_loss_dispatch_and_errors():
    clf = TinyConvNet().eval()
    x = torch.rand(2, 3, 8, 8)
    y = torch.tensor([0, 1])
    for objective in hgd.OBJECTIVES:
        loss = hgd.denoiser_loss(objective, x, x, y, clf)
        if objective != "cgd":  # the three reconstruction losses vanish at x̂ = x
            assert loss.item() == 0
    with pytest.raises(ValueError, match="Unknown HGD objective"):
        hgd.denoiser_loss("mse", x, x, y, clf)
    with pytest.raises(ValueError, match="guided by a classifier"):
        hgd.denoiser_loss("lgd", x, x, y)


# ---------------------------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {role: build_classifier("resnet_small", "shapes10", width=4).eval()
            for role in ("target", "source_a", "source_b", "holdout")}


def test_per_image_eps_with_torchattacks_gives_each_image_its_own_ball(models):
    x = torch.rand(3, 3, 32, 32) * 0.8 + 0.1  # away from 0 and 1, so nothing is clipped
    eps = torch.tensor([1.0, 5.0, 16.0]) / 255
    for steps in (1, 4):
        x_adv = attack_sets.fgsm_attack(models["target"], x, eps, steps)
        linf = (x_adv - x).abs().flatten(1).max(1).values
        assert torch.all(linf <= eps + 1e-6)
        if steps == 1:  # FGSM moves every pixel by exactly its image's ε
            torch.testing.assert_close(linf, eps)


def test_training_set_recipe(models):
    images = attack_sets.to_uint8(torch.rand(6, 3, 32, 32))
    labels = torch.arange(6) % 3
    data = attack_sets.make_adversarial_set(models, images, labels, attack_sets.TRAIN_ATTACKS, None, seed=0)
    assert len(data) == 7 * 6 and data.attack_names == tuple(a.name for a in attack_sets.TRAIN_ATTACKS)
    eps255 = data.eps * 255
    assert torch.all((eps255 >= 1) & (eps255 <= 16)) and torch.allclose(eps255, eps255.round())
    assert len(torch.unique(eps255)) > 5  # one ε per image, not one per set
    x, x_adv, y = data.tensors()
    delta = (x_adv - x).abs().flatten(1).max(1).values
    assert torch.all(delta <= data.eps + 1e-6)  # 8-bit rounding never leaves the ball
    assert torch.all(delta > 0)
    torch.testing.assert_close(y, labels[data.source])
    # the ensemble rows attack three models: the sources of Table 1
    assert [a.models for a in attack_sets.TRAIN_ATTACKS].count(attack_sets.ENSEMBLE) == 4


def test_test_sets_have_two_attacks_at_eps_4_and_16(models):
    images = attack_sets.to_uint8(torch.rand(4, 3, 32, 32))
    sets = attack_sets.make_test_sets(models, images, torch.zeros(4, dtype=torch.long))
    assert set(sets) == {"white", "black"}
    for name, data in sets.items():
        assert len(data) == 2 * 2 * 4
        assert set((data.eps * 255).round().tolist()) == {4.0, 16.0}
        x, x_adv, _ = data.tensors()
        assert torch.all((x_adv - x).abs().flatten(1).max(1).values <= data.eps + 1e-6)
    assert "holdout" in sets["black"].attack_names[0] and "target" in sets["white"].attack_names[0]
    sub = sets["white"].of_classes([0]).at_eps(16 / 255)
    assert len(sub) == 2 * 4 and torch.allclose(sub.eps, torch.full((8,), 16 / 255))


def test_make_adversarial_set_errors(models):
    with pytest.raises(TypeError, match="uint8"):
        attack_sets.make_adversarial_set(models, torch.rand(2, 3, 8, 8), torch.zeros(2), attack_sets.TRAIN_ATTACKS)
    with pytest.raises(ValueError, match="source_a"):
        attack_sets.make_adversarial_set({"target": models["target"]}, attack_sets.to_uint8(torch.rand(2, 3, 8, 8)),
                                 torch.zeros(2), attack_sets.TRAIN_ATTACKS)


# ---------------------------------------------------------------------------------------------- training

def test_train_denoiser_lowers_the_loss_and_leaves_the_classifier_untouched(models):
    images = attack_sets.to_uint8(torch.rand(10, 3, 32, 32))
    data = attack_sets.make_adversarial_set(models, images, torch.arange(10) % 10, attack_sets.TRAIN_ATTACKS[:2], None)
    settings = hgd.HGDSettings("t", SMOKE.widths, SMOKE.depths, SMOKE.decoder_widths, SMOKE.decoder_depths,
                               n_train=10, n_test=2, epochs=4, batch_size=10, lr=3e-3, lr_final=1e-3)
    clf = models["target"]
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    torch.manual_seed(0)
    d = hgd.build_denoiser("dunet", 3, settings)
    metrics = hgd.train_denoiser(d, "lgd", data, settings, classifier=clf, progress=False)
    assert metrics["epoch_losses"][-1] < metrics["epoch_losses"][0]
    assert not d.training and not clf.training
    assert all(p.requires_grad for p in clf.parameters())
    for k, v in clf.state_dict().items():
        torch.testing.assert_close(v, before[k])
    with pytest.raises(ValueError, match="guided by a classifier"):
        hgd.train_denoiser(d, "fgd", data, settings)


def test_get_hgd_caches_by_objective_and_guide(tmp_path):
    # scikit-learn's 8×8 digits keep this fast; the denoiser's strided stages go 8 → 4 → 2 → 1 → 1
    cache = ModelCache(tmp_path)
    torch.manual_seed(0)
    sources = {role: (build_classifier("resnet_small", "digits", width=4).eval(), {"hash": f"h-{role}"})
               for role in attack_sets.ENSEMBLE}
    target = sources["target"][0]
    kwargs = dict(target=target, sources=sources, device="cpu", cache=cache, progress=False)
    d1, r1 = hgd_setup.get_hgd("lgd", "digits", "smoke", 0, target_record={"hash": "guide-1"}, **kwargs)
    assert not r1["cached"] and r1["spec"]["objective"] == "lgd" and r1["spec"]["guide"] == "guide-1"
    assert r1["spec"]["sources"] == {"target": "h-target", "source_a": "h-source_a", "source_b": "h-source_b"}
    d2, r2 = hgd_setup.get_hgd("lgd", "digits", "smoke", 0, target_record={"hash": "guide-1"}, **kwargs)
    assert r2["cached"] and r2["path"] == r1["path"]
    for (k, v), w in zip(d1.state_dict().items(), d2.state_dict().values()):
        torch.testing.assert_close(v, w)
    _, r3 = hgd_setup.get_hgd("lgd", "digits", "smoke", 0, target_record={"hash": "guide-2"}, **kwargs)
    _, r4 = hgd_setup.get_hgd("cgd", "digits", "smoke", 0, target_record={"hash": "guide-1"}, **kwargs)
    assert len({r1["path"], r3["path"], r4["path"]}) == 3
    with pytest.raises(ValueError, match="Unknown HGD objective"):
        hgd_setup.get_hgd("mse", "digits", "smoke", 0, target_record={"hash": "g"}, **kwargs)
    assert d1(torch.rand(2, 1, 8, 8)).shape == (2, 1, 8, 8)


def test_evaluate_test_sets_rows(models):
    images = attack_sets.to_uint8(torch.rand(4, 3, 32, 32))
    sets = attack_sets.make_test_sets(models, images, torch.zeros(4, dtype=torch.long))
    rows = stored_sets.evaluate_test_sets(None, models["target"], sets, defense="none", classifier_name="t",
                                  dataset="shapes10")
    assert [(r["test_set"], round(r["eps"] * 255)) for r in rows] == [
        ("clean", 0), ("white", 4), ("white", 16), ("black", 4), ("black", 16)]
    assert rows[0]["denoising_loss"] == 0
    for r in rows[1:]:
        assert 0 < r["denoising_loss"] <= r["eps"] + 1e-6 and r["n"] == 8
    assert rows[1]["threat_model"] == "oblivious" and rows[3]["threat_model"] == "transfer"


def test_paper_requirements_list_what_is_missing(tmp_path):
    missing = hgd_setup.missing_paper_requirements(tmp_path)
    assert any(str(tmp_path / "train") in m for m in missing)
    assert any("inception_v3" in m for m in missing) or len(missing) >= 2
    with pytest.raises(FileNotFoundError, match="ImageNet"):
        hgd_setup.check_paper_requirements(tmp_path)


def test_balanced_images_never_return_more_images_than_asked():
    """n at least the class count: n // C from each class; fewer than the classes (a dry run's 16 of ImageNet's 1000):
    one image from each of n distinct classes, not one from every class."""
    from lib.defenses.hgd_setup import balanced_images

    _, labels = balanced_images("shapes10", "test", 20, seed=0)
    assert len(labels) == 20 and torch.bincount(labels, minlength=10).tolist() == [2] * 10
    _, labels = balanced_images("shapes10", "test", 4, seed=0)
    assert len(labels) == 4 and len(set(labels.tolist())) == 4
    _, again = balanced_images("shapes10", "test", 4, seed=0)
    assert torch.equal(labels, again)
