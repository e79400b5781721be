"""RDP's cached getters (lib.defenses.rdp_setup) at smoke scale in a temporary model cache: P trains once and loads
afterwards, its spec names no target, an ablation is another model, Table 4's noise layer makes P random and
repeatable without retraining, and F is IMPure's."""
from __future__ import annotations

import pytest
import torch

from lib.core.cache import ModelCache
from lib.core.data import load_dataset
from lib.core.purifiers import is_randomized, reseed
from lib.defenses import impure_setup, rdp_setup
from lib.defenses.rdp import RDPPurifier, Reconstructor


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's 2 cores are shared: one thread is faster than two here
    yield ModelCache(tmp_path_factory.mktemp("models"))
    torch.set_num_threads(threads)


ARGS = dict(device="cpu", progress=False)


def test_get_rdp_trains_once_and_its_spec_names_no_target(cache):
    purifier, record = rdp_setup.get_rdp("shapes10", "smoke", 0, cache=cache, **ARGS)
    assert isinstance(purifier, RDPPurifier) and not purifier.training and not is_randomized(purifier)
    spec = record["model"]["spec"]
    assert spec["kind"] == "rdp" and "target" not in spec and spec["settings"]["drop"] == ()
    assert spec["feature_network"] == record["feature_network"]["hash"]
    assert record["spec"]["model"] == record["model"]["hash"] and record["spec"]["noise_sigma"] is None
    again, loaded = rdp_setup.get_rdp("shapes10", "smoke", 0, target=torch.nn.Identity(), target_record={"hash": "x"},
                                      cache=cache, **ARGS)
    assert loaded["cached"] and loaded["hash"] == record["hash"]  # the target changes nothing
    x, _ = load_dataset("shapes10", "test").subset(4, seed=0).tensors()
    with torch.no_grad():
        torch.testing.assert_close(again(x), purifier(x))


def test_the_noise_layer_is_random_repeatable_and_keeps_the_model(cache):
    plain, plain_record = rdp_setup.get_rdp("shapes10", "smoke", 0, cache=cache, **ARGS)
    noisy, record = rdp_setup.get_rdp("shapes10", "smoke", 0, noise_sigma=0.05, cache=cache, **ARGS)
    assert isinstance(noisy, rdp_setup.NoisyRDP) and is_randomized(noisy) and noisy.differentiable
    assert record["cached"] and record["model"]["hash"] == plain_record["model"]["hash"]
    assert record["hash"] != plain_record["hash"] and record["spec"]["noise_sigma"] == 0.05
    x, _ = load_dataset("shapes10", "test").subset(4, seed=0).tensors()
    with torch.no_grad():
        reseed(noisy, 1)
        a, b = noisy(x), noisy(x)
        noisy.reseed(1)  # the method reseeds the noise layer too
        c = noisy(x)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        expected = plain((x + 0.05 * noise).clamp(0, 1))
    assert not torch.equal(a, b) and torch.equal(a, c)
    torch.testing.assert_close(a, expected)


def test_an_ablation_is_another_model_and_rdp_model_gives_R(cache):
    model, record = rdp_setup.rdp_model("shapes10", "smoke", 0, cache=cache, **ARGS)
    assert isinstance(model.reconstructor, Reconstructor) and not model.training
    ablated, ablated_record = rdp_setup.rdp_model("shapes10", "smoke", 0, drop=("reconstruction",), cache=cache, **ARGS)
    assert ablated.reconstructor is None and ablated_record["hash"] != record["hash"]
    with pytest.raises(ValueError, match="unknown"):
        rdp_setup.get_rdp("shapes10", "smoke", 0, drop=("latent",), cache=cache, **ARGS)


def test_F_is_impures_feature_network(cache):
    network, record = rdp_setup.feature_network("shapes10", "smoke", 0, cache=cache, **ARGS)
    _, theirs = impure_setup.feature_network("shapes10", "smoke", 0, cache=cache, **ARGS)
    assert record["hash"] == theirs["hash"] and record["spec"]["arch"] == "vgg_small" and record["spec"]["seed"] == 1
