"""Tests for lib.eval.analyses: hooked layer outputs, HGD's layerwise error amplification (Eq. 6), Fig. 7 fit."""
import numpy as np
import pytest
import torch
from torch import nn

from lib.eval.analyses import error_amplification, perturbation_fit, relative_distance
from lib.models.layers import layer_outputs
from lib.models.classifiers import build_classifier


def scaled_identity(factor: float, dim: int = 2) -> nn.Linear:
    layer = nn.Linear(dim, dim, bias=False)
    with torch.no_grad():
        layer.weight.copy_(factor * torch.eye(dim))
    return layer


class TwoLinear(nn.Module):
    """f1(x) = 3x, f2(x) = 2·f1(x): homogeneous layers keep every relative perturbation unchanged."""

    def __init__(self):
        super().__init__()
        self.first, self.second = scaled_identity(3.0), scaled_identity(2.0)

    @property
    def layers(self):
        return [self.first, self.second]

    def forward(self, x):
        return self.second(self.first(x.flatten(1))).view_as(x)


def test_layer_outputs_match_manual_forward_and_leave_no_hooks():
    model = TwoLinear()
    x = torch.randn(4, 2)
    first, second = layer_outputs(model, model.layers, x)
    torch.testing.assert_close(first, 3 * x)
    torch.testing.assert_close(second, 6 * x)
    assert not model.first._forward_hooks and not model.second._forward_hooks


def test_layer_outputs_keep_gradients_and_reject_unused_layers():
    model = TwoLinear()
    x = torch.randn(3, 2, requires_grad=True)
    out, = layer_outputs(model, [model.second], x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 6.0))
    with pytest.raises(ValueError, match="not called"):
        layer_outputs(model, [nn.Linear(2, 2)], x)


def test_relative_distance_l1_and_l2_on_a_known_vector():
    x = torch.tensor([[3.0, 4.0]])
    x_p = torch.tensor([[3.0, 5.0]])
    assert relative_distance(x_p, x, p=1).item() == pytest.approx(1 / 7)
    assert relative_distance(x_p, x, p=2).item() == pytest.approx(1 / 5)


def test_error_amplification_is_constant_through_linear_layers():
    model = TwoLinear()
    x = torch.rand(5, 1, 1, 2) + 0.5
    x_p = 1.1 * x  # a 10% perturbation at every level of a homogeneous network
    e = error_amplification(model, x_p.view(5, 1, 1, 2), x.view(5, 1, 1, 2), model.layers)
    assert e.shape == (5, 3)  # input + two layers
    np.testing.assert_allclose(e, 0.1, rtol=1e-5)


def test_error_amplification_on_a_cifar_resnet_is_zero_for_identical_inputs_and_grows_with_noise():
    torch.manual_seed(0)
    model = build_classifier("resnet_small", "shapes10", width=4).eval()
    x = torch.rand(6, 3, 32, 32)
    same = error_amplification(model, x, x)
    assert same.shape == (6, len(model.layers) + 1)
    assert np.all(same == 0)
    small = error_amplification(model, (x + 0.01 * torch.randn_like(x)).clamp(0, 1), x).mean(0)
    large = error_amplification(model, (x + 0.1 * torch.randn_like(x)).clamp(0, 1), x).mean(0)
    assert np.all(large > small)


def test_error_amplification_rejects_mismatched_shapes():
    model = TwoLinear()
    with pytest.raises(ValueError, match="same shape"):
        error_amplification(model, torch.zeros(2, 1, 1, 2), torch.zeros(3, 1, 1, 2), model.layers)


def test_perturbation_fit_recovers_a_known_slope():
    gen = torch.Generator().manual_seed(0)
    dx_adv = (torch.rand(20_000, generator=gen) * 2 - 1) * 16 / 255
    noise = torch.randn(20_000, generator=gen) * 0.002
    fit = perturbation_fit(dx_adv, 0.6 * dx_adv + noise)
    assert fit["slope"] == pytest.approx(0.6, abs=0.01)
    assert 0.95 < fit["r"] <= 1
    exact = perturbation_fit(dx_adv.view(100, 2, 10, 10), 1.7 * dx_adv.view(100, 2, 10, 10))
    assert exact["slope"] == pytest.approx(1.7, rel=1e-6)
    assert exact["r"] == pytest.approx(1.0)
    assert exact["n"] == 20_000


def test_perturbation_fit_errors():
    with pytest.raises(ValueError, match="zero everywhere"):
        perturbation_fit(torch.zeros(10), torch.ones(10))
    with pytest.raises(ValueError, match="same number"):
        perturbation_fit(torch.ones(10), torch.ones(9))


def test_class_separation_scores_separated_classes_above_mixed_ones():
    from lib.eval.analyses import class_separation

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(30)
    centres = torch.randn(4, 16, generator=gen) * 10
    separated = centres[labels] + torch.randn(120, 16, generator=gen)
    mixed = torch.randn(120, 16, generator=gen)
    good = class_separation(separated, labels, seed=0)
    bad = class_separation(mixed, labels, seed=0)
    assert good["embedding"].shape == (120, 2)
    assert good["silhouette"] > 0.5 and abs(bad["silhouette"]) < 0.1
    assert good["silhouette_2d"] > bad["silhouette_2d"]
    with pytest.raises(ValueError, match="differ in length"):
        class_separation(separated, labels[:10])
