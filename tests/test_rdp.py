"""RDP (lib.defenses.rdp) and Fig. 3's spectra (lib.eval.analyses): P has no skip connection, R reads P's latent,
the loss terms and weights of Eqs. 2-9, label-free ε-bounded training examples (Eq. 1), the ablations, a training
step lowers L_P and L_R, F stays frozen, Fig. 7's outputs, and the spectrum of a sinusoid peaks at its frequency."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lib.defenses import rdp
from lib.eval.analyses import log_magnitude_spectrum, radial_profile
from lib.models.classifiers import build_classifier


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's 2 cores are shared: one thread is faster than two here
    yield
    torch.set_num_threads(threads)


SMALL = rdp.rdp_settings("smoke", lr=3e-3)


def networks(settings: rdp.RDPSettings = SMALL) -> rdp.RDP:
    torch.manual_seed(0)
    return rdp.build(settings, 3)


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def features() -> nn.Module:
    torch.manual_seed(1)
    return rdp.feature_extractor(build_classifier("vgg_small", "shapes10", 8), SMALL.feature_depth)


# ------------------------------------------------------------------------------------------------ networks

def test_the_purifier_depends_on_its_input_only_through_the_latent():
    P = networks().purifier.eval()
    x, other = images(4, 0), images(4, 1)
    with torch.no_grad():
        out = P(x)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        torch.testing.assert_close(out, P.decode(P.encode(x)))
        assert torch.equal(P(x), out) and not P.randomized and P.differentiable
        assert P.encode(x).shape == (4, P.latent_channels, 16, 16)  # smoke: one downsampling
        zeros = torch.zeros_like(P.encode(x))
        P.encode = lambda image: zeros  # zero the latent: no other path from the input to the output
        torch.testing.assert_close(P(x), P(other))
        torch.testing.assert_close(P(x), P.decode(zeros))
    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(P(xr).sum(), xr, allow_unused=True)
    assert grad is None  # no skip connection carries the input past the latent
    del P.encode
    (grad,) = torch.autograd.grad(P(xr).sum(), xr)
    assert grad.abs().sum() > 0  # through the latent it does
    with pytest.raises(ValueError, match="divisible by 2"):
        P(torch.rand(1, 3, 31, 31))


def test_the_reconstructor_reads_the_purifiers_latent():
    model = networks()
    P, R = model.purifier.eval(), model.reconstructor.eval()
    x = images(4)
    latent = P.encode(x).detach().requires_grad_()
    out = R(x, latent)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    (grad,) = torch.autograd.grad(out.sum(), latent)
    assert grad.abs().sum() > 0
    with torch.no_grad():
        assert not torch.allclose(R(x, latent), R(x, torch.zeros_like(latent)), atol=1e-4)
    with pytest.raises(ValueError, match="latent has shape"):
        R(x, latent[:, :2])


# ------------------------------------------------------------------------------------------------ losses

def test_each_loss_term_and_its_weight():
    model, F = networks(), features()
    critic = rdp.Discriminator(3, 8, 3, pooled=True)
    x = images(4)
    x_adv = (x + 16 / 255 * (2 * images(4, 5) - 1)).clamp(0, 1)
    settings = rdp.rdp_settings("paper", alpha=(0.2, 0.3, 0.4), beta=0.5)
    assert rdp.loss_weights(settings) == {"feat": 1.0, "pix": 0.2, "lat": 0.3, "adv": 0.4, "feat_R": 1.0, "pix_R": 0.5}
    terms = rdp.loss_terms(model, F, critic, x, x_adv, settings)
    P, R = model.purifier, model.reconstructor
    with torch.no_grad():  # each term by its equation (train mode, as in loss_terms)
        latent = P.encode(x_adv)
        purified, rebuilt = P.decode(latent), R(x_adv, latent)
        expected = {"feat": (F(purified) - F(x)).abs().mean(), "pix": (purified - x).abs().mean(),
                    "lat": (latent - P.encode(x)).abs().mean(),
                    "adv": -torch.log(torch.sigmoid(critic(purified) - critic(x))).mean(),
                    "feat_R": (F(rebuilt) - F(x_adv)).abs().mean(), "pix_R": (rebuilt - x_adv).abs().mean()}
    assert set(terms) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(terms[k].detach(), v, rtol=1e-4, atol=1e-6)
    total = rdp.weighted_losses(terms, settings)
    L_P = terms["feat"] + 0.2 * terms["pix"] + 0.3 * terms["lat"] + 0.4 * terms["adv"]
    L_R = terms["feat_R"] + 0.5 * terms["pix_R"]
    torch.testing.assert_close(total["L_P"], L_P)
    torch.testing.assert_close(total["L_R"], L_R)
    torch.testing.assert_close(total["loss"], L_P + L_R)
    paper = rdp.SETTINGS["paper"]
    assert (paper.alpha, paper.beta, paper.lr) == ((1e-2, 1e-1, 1e-4), 1e-4, 1e-4)
    assert (paper.batch_size, paper.crop, paper.eps) == (48, 128, 16 / 255)
    assert set(rdp.SETTINGS) == {"smoke", "quick", "paper"}


@pytest.mark.parametrize("dropped", rdp.DROPPABLE)
def test_a_dropped_term_is_absent_and_the_rest_keep_their_weights(dropped):
    settings = rdp.rdp_settings("smoke", drop=(dropped,))
    model, F = networks(settings), features()
    assert (model.reconstructor is None) == (dropped == "reconstruction")
    trainer = rdp.RDPTrainer(model, F, settings, 3, "cpu")
    assert (trainer.critic is None) == (dropped == "adv")
    x = images(4)
    terms = rdp.loss_terms(model, F, trainer.critic, x, x, settings)
    absent = {"feat_R", "pix_R"} if dropped == "reconstruction" else {dropped}
    assert not absent & set(terms) and len(terms) == 6 - len(absent)
    total = rdp.weighted_losses(terms, settings)
    w = rdp.loss_weights(settings)
    torch.testing.assert_close(total["L_P"], sum(w[k] * terms[k] for k in ("feat", "pix", "lat", "adv") if k in terms))
    assert ("L_R" in total) == (dropped != "reconstruction")
    out = trainer.update(x, x)
    assert not absent & set(out) and ("loss_d" in out) == (dropped != "adv")


def test_settings_reject_unknown_ablations_and_empty_losses():
    with pytest.raises(ValueError, match="unknown \\['latent'\\]"):
        rdp.rdp_settings("quick", drop=("latent",))
    with pytest.raises(ValueError, match="without a term"):
        rdp.rdp_settings("quick", drop=("feat", "pix", "lat", "adv"))
    with pytest.raises(ValueError, match="16/255"):
        rdp.rdp_settings("quick", eps=16)
    with pytest.raises(ValueError, match="Unknown scale"):
        rdp.rdp_settings("huge")


# ------------------------------------------------------------------------------------------------ training

def test_training_examples_use_no_labels_and_respect_eps():
    F = features()
    x = images(6)
    trainer = rdp.RDPTrainer(networks(), F, SMALL, 3, "cpu", seed=3)
    x_adv = trainer.examples(x)
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= SMALL.eps + 1e-6 and (x_adv != x).any()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():  # it distorts F's features (Eq. 1's objective) beyond its random start
        assert (F(x_adv) - F(x)).pow(2).mean() > 0
    # labels are ignored: the same step with no labels and with random ones
    runs = [rdp.RDPTrainer(networks(), features(), SMALL, 3, "cpu", seed=3).step(x, y)
            for y in (None, torch.randint(0, 10, (6,)))]
    assert runs[0] == runs[1]


def test_a_training_step_lowers_L_P_and_L_R_on_a_fixed_batch():
    x = images(4)
    trainer = rdp.RDPTrainer(networks(), features(), SMALL, 3, "cpu")
    x_adv = trainer.examples(x)
    losses = [trainer.update(x, x_adv) for _ in range(12)]
    assert losses[-1]["L_P"] < 0.8 * losses[0]["L_P"] and losses[-1]["L_R"] < 0.8 * losses[0]["L_R"]


def test_the_trainer_leaves_F_in_eval_mode_and_frozen():
    torch.manual_seed(2)
    F = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).train()
    stats = F[1].running_mean.clone()
    trainer = rdp.RDPTrainer(networks(), F, SMALL, 3, "cpu")
    trainer.step(images(4))
    assert not F.training and not any(p.requires_grad for p in F.parameters())
    assert all(p.grad is None for p in F.parameters()) and torch.equal(F[1].running_mean, stats)
    assert trainer.model.training  # fit puts the model back in eval mode at the end, not the step


def test_train_runs_fit_on_a_dataset_and_returns_the_model_in_eval_mode():
    from lib.core.data import load_dataset

    data = load_dataset("shapes10", "test").subset(64, 0)  # the smaller split: generated faster
    model = networks()
    metrics = rdp.train(model, data, rdp.rdp_settings("smoke", n_train=64), progress=False, device="cpu",
                        target=build_classifier("vgg_small", "shapes10", 8))
    assert metrics["steps"] == 2 and {"final_L_P", "final_L_R", "final_loss_d"} <= set(metrics)
    assert not model.training and all(math.isfinite(v) for v in metrics.values())


def test_random_crops_are_windows_of_each_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    crops = rdp.random_crop(x, 4, torch.Generator().manual_seed(0))
    assert crops.shape == (2, 1, 4, 4)
    for image, crop in zip(x, crops):
        top, left = divmod(int((crop[0, 0, 0] - image[0, 0, 0]).item()), 6)
        assert torch.equal(crop, image[:, top:top + 4, left:left + 4])
    assert rdp.random_crop(x, 6, torch.Generator()) is x
    with pytest.raises(ValueError, match="larger than the images"):
        rdp.random_crop(torch.rand(1, 1, 6, 4), 5, torch.Generator())


def test_feature_extractor_takes_lib_and_torchvision_vggs():
    vgg = build_classifier("vgg_small", "shapes10", 8).eval()
    F = rdp.feature_extractor(vgg, 3)
    x = images(2)
    with torch.no_grad():
        pools = [i for i, m in enumerate(vgg.body) if isinstance(m, nn.MaxPool2d)]
        torch.testing.assert_close(F(x), vgg.body[:pools[2] + 1](vgg.normalize(x)))

    class TinyVGG(nn.Module):  # torchvision's VGG layout: `.features`, a Sequential with MaxPool2d
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*[m for _ in range(4) for m in (nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
                                                                        nn.MaxPool2d(2))])
    from lib.models.classifiers import ImageNetClassifier
    wrapped = ImageNetClassifier(TinyVGG())
    with torch.no_grad():
        torch.testing.assert_close(rdp.feature_extractor(wrapped, 3)(x), wrapped.net.features[:9](wrapped.normalize(x)))


# ------------------------------------------------------------------------------------------------ Fig. 7

def test_disentangled_outputs():
    model = networks()
    model.train()
    x = images(3)
    outputs = rdp.disentangled_outputs(model.purifier, model.reconstructor, x, torch.Generator().manual_seed(0))
    assert set(outputs) == {"purified", "reconstructed", "noise_latent"}
    assert all(v.shape == x.shape and v.min() >= 0 and v.max() <= 1 for v in outputs.values())
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(outputs["purified"], model.purifier(x))
        torch.testing.assert_close(outputs["reconstructed"], model.reconstructor(x, model.purifier.encode(x)))
    assert not torch.allclose(outputs["noise_latent"], outputs["reconstructed"], atol=1e-4)
    again = rdp.disentangled_outputs(model.purifier, model.reconstructor, x, torch.Generator().manual_seed(0))
    assert torch.equal(again["noise_latent"], outputs["noise_latent"])
    model.train()
    rdp.disentangled_outputs(model.purifier, model.reconstructor, x, torch.Generator())
    assert model.purifier.training and model.reconstructor.training  # modes restored


# ------------------------------------------------------------------------------------------------ Fig. 3

def test_the_spectrum_of_a_sinusoid_peaks_at_its_frequency():
    h, w, (kr, kc) = 32, 32, (3, 4)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    wave = torch.sin(2 * math.pi * (kr * rows / h + kc * cols / w))
    delta = wave.expand(5, 3, h, w) * torch.linspace(0.01, 0.05, 5).view(5, 1, 1, 1)
    spectrum = log_magnitude_spectrum(delta)
    assert spectrum.shape == (h, w)
    peak = divmod(int(spectrum.argmax()), w)
    assert peak in {(h // 2 + kr, w // 2 + kc), (h // 2 - kr, w // 2 - kc)}
    assert spectrum[h // 2, w // 2] < 1e-6  # no constant component
    profile = radial_profile(spectrum)
    assert profile.shape == (round(math.hypot(h // 2, w // 2)) + 1,) and int(profile.argmax()) == 5  # hypot(3, 4)
    noise = log_magnitude_spectrum(torch.randn(64, 3, h, w, generator=torch.Generator().manual_seed(0)))
    flat = radial_profile(noise)[1:]
    assert flat.std() / flat.mean() < 0.1  # white noise: the same energy at every frequency
    with pytest.raises(ValueError, match="N, C, H, W"):
        log_magnitude_spectrum(torch.rand(3, 8, 8))
