"""The defense registry: every name in DEFENSES meets the purifier contract it declares (as torchattacks tests
every attack in `__all__`), built by get_defense at smoke scale in a temporary model cache."""
import dataclasses
import inspect

import pytest
import torch
from torch import nn

from lib.core.cache import ModelCache
from lib.core.data import load_dataset
from lib.core.purifiers import Purifier, is_differentiable, is_randomized, reseed
from lib.defenses import registry
from lib.defenses.baselines import BASELINES
from lib.defenses.hgd import ARCHITECTURES, OBJECTIVES
from lib.defenses.registry import DEFENSES, DefenseEntry, defense_settings, get_defense
from lib.defenses.transforms import TRANSFORMS
from lib.models.zoo import get_classifier


def check_defense_contract(purifier: nn.Module, entry: DefenseEntry, x: torch.Tensor, seed: int = 0) -> None:
    """Raise AssertionError unless `purifier` keeps the contract of lib.core.purifiers as `entry` declares it."""
    name = entry.name
    assert not any(m.training for m in purifier.modules()), f"{name}: not in eval mode"
    assert is_differentiable(purifier) == entry.differentiable, f"{name}: `differentiable` differs from the object's"
    assert is_randomized(purifier) == entry.randomized, f"{name}: `randomized` differs from the object's"
    with torch.no_grad():
        rng = torch.random.get_rng_state()
        reseed(purifier, seed)
        out = purifier(x)
        assert torch.equal(torch.random.get_rng_state(), rng), f"{name}: drew from torch's global generator"
        again = purifier(x)  # no reseed: a fresh draw for a random purifier
        reseed(purifier, seed)
        repeat = purifier(x)
        reseed(purifier, seed + 1)
        other = purifier(x)
    assert out.shape == x.shape and out.dtype == x.dtype, f"{name}: {tuple(x.shape)} in, {tuple(out.shape)} out"
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, f"{name}: values outside [0, 1]"
    assert torch.equal(out, repeat), f"{name}: not repeatable after reseed"
    if entry.randomized:
        assert not torch.equal(out, again), f"{name}: declared randomized, but two calls agree"
        assert not torch.equal(out, other), f"{name}: declared randomized, but two seeds agree"
    else:
        assert torch.equal(out, again) and torch.equal(out, other), f"{name}: declared deterministic, but varies"

    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    xg = x.clone().requires_grad_(True)
    surrogate = purifier.bpda_surrogate(xg)
    assert surrogate.shape == out.shape, f"{name}: the BPDA surrogate gives {tuple(surrogate.shape)}"
    identity = torch.equal(surrogate.detach(), x)
    assert identity != entry.bpda_surrogate, \
        f"{name}: bpda_surrogate={entry.bpda_surrogate} but the surrogate is {'' if identity else 'not '}the identity"
    reseed(purifier, seed)
    path = purifier(xg) if entry.differentiable else surrogate  # what white-box / BPDA attacks differentiate
    assert path.requires_grad, f"{name}: no gradient reaches the input through " \
                               f"{'forward' if entry.differentiable else 'the BPDA surrogate'}"
    grad, = torch.autograd.grad((path * weights).sum(), xg)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0, f"{name}: zero or non-finite input gradients"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(cache, {dataset: (target, record, 4 test images)}) at smoke scale, in a temporary model cache."""
    root = tmp_path_factory.mktemp("models")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PURIFY_CACHE", str(root))  # get_hgd trains its attack sources through the default cache
        torch.set_num_threads(1)  # measured: on 2 shared cores, 2 threads made the smoke training 5-10x slower
        cache = ModelCache(root)
        data = {}
        for dataset in ("shapes10", "digits"):
            target, record = get_classifier(dataset, "natural", "smoke", 0, device="cpu", cache=cache, progress=False)
            x, _ = load_dataset(dataset, "test").subset(4, seed=0).tensors()
            data[dataset] = target, record, x
        yield cache, data
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(DEFENSES))
def test_every_registered_defense_meets_its_contract(name, smoke):
    cache, data = smoke
    entry = DEFENSES[name]
    if entry.kind == "transform":  # no target needed; 1-channel inputs are just tensors
        purifier, classifier, record = get_defense(name, "shapes10", "smoke", 0, device="cpu")
        assert classifier is None and record["hash"]
        x = data["shapes10"][2]
        check_defense_contract(purifier, entry, x)
        if entry.grayscale:
            check_defense_contract(purifier, entry, x.mean(1, keepdim=True))
        return
    for dataset in ("shapes10", "digits") if entry.grayscale else ("shapes10",):
        target, target_record, x = data[dataset]
        purifier, classifier, record = get_defense(name, dataset, "smoke", 0, target=target,
                                                   target_record=target_record, device="cpu", cache=cache,
                                                   progress=False)
        check_defense_contract(purifier, entry, x)
        assert record["spec"]["dataset"] == dataset and record["hash"]
        own = name.startswith("menet") or name in ("idfr", "soap")  # ME-Net's, SOAP's own; IDFR's head ∘ FR ∘ encoder
        assert (classifier is record["classifier"]) if own else (classifier is target)
        with torch.no_grad():
            assert classifier(purifier(x)).shape == (len(x), 10)


class _Noise(Purifier):
    """Adds noise from its own generator (a correct random purifier, unless a subclass lies)."""

    randomized = True

    def forward(self, x):
        return (x + 0.1 * torch.randn(x.shape, generator=self.generator(x.device))).clamp(0, 1)


class _ClaimsDeterministic(_Noise):
    randomized = False


class _GlobalNoise(_Noise):
    def forward(self, x):
        return (x + 0.1 * torch.randn(x.shape)).clamp(0, 1)


class _OutOfRange(Purifier):
    def forward(self, x):
        return 2 * x - 0.5


class _Detached(Purifier):  # claims differentiable, cuts the graph
    def forward(self, x):
        return x.detach().clone()


class _ShapeChanging(Purifier):
    def forward(self, x):
        return x[..., 1:, 1:]


def _fake(cls: type[Purifier], **flags) -> DefenseEntry:
    return DefenseEntry("fake", "Fake", "none", "transform", **{**registry._flags(cls), **flags}, needs_target=False,
                        grayscale=True, getter=lambda name, dataset, scale, seed, **kw: (cls(seed), {}),
                        settings=lambda scale, dataset: {})


@pytest.mark.parametrize("name, entry", [
    ("jpeg", dataclasses.replace(DEFENSES["jpeg"], randomized=True)),  # a wrong flag on a real defense
    ("gaussian_noise", dataclasses.replace(DEFENSES["gaussian_noise"], bpda_surrogate=True)),
    ("fake", _fake(_ClaimsDeterministic)), ("fake", _fake(_GlobalNoise)), ("fake", _fake(_OutOfRange)),
    ("fake", _fake(_Detached)), ("fake", _fake(_ShapeChanging)), ("fake", _fake(_Noise, randomized=False)),
])
def test_a_defense_that_breaks_its_declared_contract_fails_the_check(monkeypatch, name, entry):
    monkeypatch.setattr(registry, "DEFENSES", {**DEFENSES, name: entry})  # a copy of the registry
    purifier, _, _ = get_defense(name, "shapes10", "smoke", 0, device="cpu")
    with pytest.raises(AssertionError):
        check_defense_contract(purifier, entry, torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))


def test_a_correct_fake_passes_the_check(monkeypatch):
    monkeypatch.setattr(registry, "DEFENSES", {**DEFENSES, "fake": _fake(_Noise)})
    check_defense_contract(get_defense("fake", device="cpu").purifier, _fake(_Noise), torch.rand(2, 3, 16, 16))


def test_the_registry_covers_every_transform_baseline_hgd_variant_dir_idfr_impure_superres_and_rdp():
    hgd = {f"hgd_{o}" for o in OBJECTIVES if o != "pixel"} | {f"hgd_pixel_{a}" for a in ARCHITECTURES}
    assert set(DEFENSES) == set(TRANSFORMS) | set(BASELINES) | hgd | {"dir", "idfr", "impure", "superres", "rdp"}
    assert all(e.name == name and e.kind in registry.KINDS and e.citation for name, e in DEFENSES.items())
    assert len(registry.table()) == len(DEFENSES)


@pytest.mark.parametrize("name", ["ape_gan", "hgd_lgd", "dir", "idfr", "impure", "rdp"])
def test_learned_options_are_the_real_getters_keywords(name):
    getter = {"ape_gan": "lib.defenses.baselines:get_baseline", "hgd_lgd": "lib.defenses.hgd_setup:get_hgd",
              "dir": "lib.defenses.dir_setup:get_dir", "idfr": "lib.defenses.idfr_setup:get_idfr",
              "impure": "lib.defenses.impure_setup:get_impure", "rdp": "lib.defenses.rdp_setup:get_rdp"}[name]
    module, attr = getter.split(":")
    params = set(inspect.signature(getattr(__import__(module, fromlist=[attr]), attr)).parameters)
    assert set(DEFENSES[name].options) | set(registry.STANDARD) <= params


@pytest.mark.parametrize("scale", ["smoke", "quick", "paper"])
def test_every_defense_has_settings_at_every_scale(scale):
    for name in DEFENSES:
        assert defense_settings(name, scale) is not None
    assert defense_settings("jpeg", scale) == {"quality": 75}
    assert defense_settings("pixel_deflection", scale, "imagefolder")["deflections"] == 200


def test_unknown_names_list_the_registry():
    with pytest.raises(ValueError, match="Unknown defense 'jpg'") as err:
        get_defense("jpg")
    assert str(sorted(DEFENSES)) in str(err.value) and "sorted(lib.defenses.registry.DEFENSES)" in str(err.value)


def test_a_learned_defense_without_a_target_says_where_to_get_one():
    for kwargs in ({}, {"target": nn.Identity()}):
        with pytest.raises(ValueError, match="lib.models.zoo.get_classifier"):
            get_defense("hgd_lgd", "shapes10", "smoke", **kwargs)


def test_unknown_options_are_named_with_the_accepted_ones():
    assert get_defense("jpeg", quality=25).purifier.quality == 25
    with pytest.raises(TypeError, match=r"\['qualty'\].*\['quality'\]"):
        get_defense("jpeg", qualty=25)
    with pytest.raises(TypeError, match=r"\['arch'\].*\['classes', 'sources'\]"):  # checked before any training
        get_defense("hgd_lgd", target=nn.Identity(), target_record={}, arch="dae")
