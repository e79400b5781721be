"""Bad inputs at every public entry point: a clear error naming the argument and the fix, before any work.

One parametrised test per entry point walks its list of bad inputs (build_attack, run_attack, a classifier's
forward, evaluate, clean_row, evaluate_oblivious, attacked_model, sanity_checks; the papermill driver's `-p`
values are in tests/test_reproduce.py). A counting model checks that nothing ran before the error (at most
the one probe forward pass that `evaluate` uses to learn the class count, which is where the classifier's own
channel check fires). Then the train/eval-mode bug: attacks on wrappers (Defended, InRange) used to leave the
classifier in training mode, so the next forward pass updated its batch-norm statistics.
"""
import pandas as pd
import pytest
import torch
from torch import nn

from lib.attacks.registry import build_attack, run_attack
from lib.attacks.threat_models import EOT, attacked_model
from lib.core.purifiers import Defended, Identity, Purifier
from lib.core.settings import seed_everything
from lib.eval.evaluation import clean_row, evaluate, evaluate_oblivious
from lib.eval.sanity import all_passed, sanity_checks
from lib.models.classifiers import build_classifier

NAN = float("nan")


@pytest.fixture(scope="module")
def net():
    """An untrained batch-norm classifier (resnet_small, width 8) on shapes10 (3 channels, 32×32), eval mode."""
    seed_everything(0)
    return build_classifier("resnet_small", "shapes10", width=8).eval()


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 32, 32, generator=gen), torch.randint(0, 10, (6,), generator=gen)


class Counting(nn.Module):
    """Counts forward passes of the wrapped classifier."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0
        self.training = model.training

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def _nan_images(x):
    x = x.clone()
    x[0, 0, 0, 0] = NAN
    return x


# (case id, keyword overrides or a function of (x, y) giving (x, y), error type, words the message must hold)
IMAGE_AND_LABEL_CASES = [
    ("images_0_255", lambda x, y: (x * 255, y), ValueError, ["outside [0, 1]", "divide 0-255 data by 255"]),
    ("images_nan", lambda x, y: (_nan_images(x), y), ValueError, ["NaN"]),
    ("images_uint8", lambda x, y: ((x * 255).to(torch.uint8), y), TypeError, ["x.float() / 255"]),
    ("images_3d", lambda x, y: (x[0], y), ValueError, ["(N, C, H, W)"]),
    ("labels_float", lambda x, y: (x, y.float()), TypeError, ["y must be an integer tensor", "y.long()"]),
    ("labels_count", lambda x, y: (x, y[:4]), ValueError, ["4 labels for 6 images"]),
    ("labels_2d", lambda x, y: (x, y[:, None]), ValueError, ["1-D", "y.flatten()"]),
    ("labels_negative", lambda x, y: (x, y - 20), ValueError, ["outside [0, "]),
]


# --- build_attack --------------------------------------------------------------------------------------

BUILD_CASES = [
    ("steps_negative", dict(steps=-5), ValueError, ["steps=-5", "int ≥ 1", "eps=0"]),
    ("steps_zero", dict(steps=0), ValueError, ["steps=0", "int ≥ 1"]),
    ("steps_float", dict(steps=2.5), TypeError, ["steps must be an int"]),
    ("steps_bool", dict(steps=True), TypeError, ["steps must be an int"]),
    ("eps_255_units", dict(eps=8), ValueError, ["eps=8 is above 1", "8/255 = 0.03137"]),
    ("eps_negative", dict(eps=-0.1), ValueError, ["eps=-0.1", "negative"]),
    ("eps_nan", dict(eps=NAN), ValueError, ["eps=nan", "finite"]),
    ("eps_string", dict(eps="8/255"), TypeError, ["eps must be a number"]),
    ("step_size_255_units", dict(step_size=2), ValueError, ["step_size=2", "2/255"]),
    ("pgd_l2_eps_nan", dict(name="pgd_l2", eps=NAN), ValueError, ["eps=nan", "L2 radius"]),
    ("pgd_l2_eps_negative", dict(name="pgd_l2", eps=-1.0), ValueError, ["eps=-1", "L2 radius"]),
    ("pgd_l2_step_nan", dict(name="pgd_l2", eps=0.5, step_size=NAN), ValueError, ["step_size=nan"]),
    ("checks_zero", dict(checks=0), ValueError, ["checks=0"]),
    ("n_classes_one", dict(n_classes=1), ValueError, ["n_classes=1"]),
    ("unknown_attack", dict(name="pgdd"), ValueError, ["Unknown attack 'pgdd'"]),
    ("unknown_target", dict(target="most_likely"), ValueError, ["Unknown target mode"]),
    ("model_not_module", dict(model=lambda x: x), TypeError, ["model must be an nn.Module"]),
]


@pytest.mark.parametrize("kwargs,error,words", [c[1:] for c in BUILD_CASES], ids=[c[0] for c in BUILD_CASES])
def test_build_attack_rejects(net, kwargs, error, words):
    kwargs = {"name": "pgd", "model": net, **kwargs}
    with pytest.raises(error) as info:
        build_attack(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_build_attack_accepts_the_edges(net):
    assert build_attack("pgd", net, eps=0.0, steps=1, step_size=0.0).steps == 1
    assert build_attack("pgd_l2", net, eps=2.0, steps=1).eps == 2.0  # an L2 radius may exceed 1
    import numpy as np

    assert build_attack("pgd", net, steps=np.int64(3)).steps == 3


# --- run_attack ------------------------------------------------------------------------------------------

RUN_CASES = IMAGE_AND_LABEL_CASES + [
    ("labels_above_n_classes", lambda x, y: (x, y + 10), ValueError, ["outside [0, 10)"]),
]


@pytest.mark.parametrize("bad,error,words", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_run_attack_rejects_before_any_forward(net, batch, bad, error, words):
    counting = Counting(net)
    attack = build_attack("pgd", counting, steps=2, n_classes=10)
    x, y = bad(*batch)
    with pytest.raises(error) as info:
        run_attack(attack, x, y)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert counting.calls == 0


def test_run_attack_rejects_a_non_attack(net, batch):
    with pytest.raises(TypeError, match="torchattacks Attack"):
        run_attack(net, *batch)


def test_run_attack_on_an_empty_batch_returns_it(net, batch):
    x, y = batch
    assert run_attack(build_attack("pgd", net, steps=1), x[:0], y[:0]).shape == (0, 3, 32, 32)


@pytest.mark.parametrize("name", ["cw", "deepfool"])
def test_minimum_norm_attacks_at_eps_zero_return_the_input(net, batch, name):
    """CW and DeepFool are L2 attacks projected onto the L∞ ball of eps: at eps = 0 nothing may move."""
    x, y = batch
    counting = Counting(net)
    adv = run_attack(build_attack(name, counting, eps=0.0, steps=10), x, y)
    assert torch.equal(adv, x) and counting.calls == 0


def test_pgd_l2_at_eps_zero_does_not_move(net, batch):
    x, y = batch
    assert (run_attack(build_attack("pgd_l2", net, eps=0.0, steps=2), x, y) - x).abs().max() <= 1e-6


# --- the classifier's forward -------------------------------------------------------------------------------

FORWARD_CASES = [
    ("images_0_255", lambda x: x * 255, ValueError, ["up to 255", "above 1", "divide 0-255 data by 255"]),
    ("images_nan", _nan_images, ValueError, ["contains NaN"]),
    ("one_channel", lambda x: x[:, :1], ValueError, ["1 channel(s)", "expects 3", "x.expand(-1, 3, -1, -1)"]),
    ("four_channels", lambda x: torch.cat([x, x[:, :1]], 1), ValueError, ["4 channel(s)", "expects 3"]),
    ("uint8", lambda x: (x * 255).to(torch.uint8), TypeError, ["float", "x.float() / 255"]),
    ("not_a_batch", lambda x: x[0], ValueError, ["(N, C, H, W)"]),
]


@pytest.mark.parametrize("bad,error,words", [c[1:] for c in FORWARD_CASES], ids=[c[0] for c in FORWARD_CASES])
def test_classifier_forward_rejects(net, batch, bad, error, words):
    with pytest.raises(error) as info, torch.no_grad():
        net(bad(batch[0]))
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    with pytest.raises(error):  # features() starts with the same layer
        net.features(bad(batch[0]))


def test_classifier_forward_accepts_rounding_above_one(net, batch):
    with torch.no_grad():
        assert net((batch[0] + 1e-7).clamp(max=1 + 1e-7)).shape == (6, 10)
        assert net(batch[0][:0]).shape == (0, 10)


def test_digits_classifier_takes_one_channel():
    model = build_classifier("resnet_small", "digits", width=8).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="expects 1"):
        model(torch.rand(2, 3, 8, 8))


# --- evaluate ------------------------------------------------------------------------------------------------

EVALUATE_CASES = [
    ("steps_negative", dict(steps=-5), ValueError, ["steps=-5", "int ≥ 1"]),
    ("steps_float", dict(steps=1.5), TypeError, ["steps must be an int"]),
    ("eot_samples_zero", dict(threat_model="white-box+eot", eot_samples=0), ValueError, ["eot_samples=0"]),
    ("eot_samples_negative", dict(eot_samples=-1), ValueError, ["eot_samples=-1"]),
    ("defense_runs_zero", dict(defense_runs=0), ValueError, ["defense_runs=0"]),
    ("batch_size_zero", dict(batch_size=0), ValueError, ["batch_size=0"]),
    ("eps_255_units", dict(eps=8), ValueError, ["eps=8 is above 1", "8/255"]),
    ("eps_nan", dict(eps=NAN), ValueError, ["eps=nan"]),
    ("pgd_l2_eps_negative", dict(attack="pgd_l2", eps=-0.5), ValueError, ["eps=-0.5"]),
    ("unknown_attack", dict(attack="pgdd"), ValueError, ["Unknown attack"]),
    ("unknown_threat_model", dict(threat_model="whitebox"), ValueError, ["Unknown threat model"]),
    ("empty_batch", lambda x, y: (x[:0], y[:0]), ValueError, ["empty batch", "at least one image"]),
    ("one_channel", lambda x, y: (x[:, :1], y), ValueError, ["1 channel(s)", "x.expand(-1, 3, -1, -1)"]),
    ("labels_above_n_classes", lambda x, y: (x, y + 10), ValueError, ["outside [0, 10)"]),
] + IMAGE_AND_LABEL_CASES


def _call(entry, net, batch, bad):
    x, y = batch
    kwargs = {}
    if callable(bad):
        x, y = bad(x, y)
    else:
        kwargs = bad
    return entry(x, y, **kwargs)


@pytest.mark.parametrize("bad,error,words", [c[1:] for c in EVALUATE_CASES], ids=[c[0] for c in EVALUATE_CASES])
def test_evaluate_rejects_before_attacking(net, batch, bad, error, words):
    counting = Counting(net)
    with pytest.raises(error) as info:
        _call(lambda x, y, **kw: evaluate(None, counting, x, y, **{"steps": 2, **kw}), net, batch, bad)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert counting.calls <= 1  # at most the probe that learns the class count


CLEAN_CASES = [
    ("defense_runs_zero", dict(defense_runs=0), ValueError, ["defense_runs=0"]),
    ("empty_batch", lambda x, y: (x[:0], y[:0]), ValueError, ["empty batch"]),
    ("one_channel", lambda x, y: (x[:, :1], y), ValueError, ["1 channel(s)"]),
    ("labels_above_n_classes", lambda x, y: (x, y + 10), ValueError, ["outside [0, 10)"]),
] + IMAGE_AND_LABEL_CASES


@pytest.mark.parametrize("bad,error,words", [c[1:] for c in CLEAN_CASES], ids=[c[0] for c in CLEAN_CASES])
def test_clean_row_rejects(net, batch, bad, error, words):
    counting = Counting(net)
    with pytest.raises(error) as info:
        _call(lambda x, y, **kw: clean_row(None, counting, x, y, **kw), net, batch, bad)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert counting.calls <= 1


OBLIVIOUS_CASES = [
    ("defense_runs_zero", dict(defense_runs=0), ValueError, ["defense_runs=0"]),
    ("steps_negative", dict(steps=-1), ValueError, ["steps=-1"]),
    ("batch_size_zero", dict(batch_size=0), ValueError, ["batch_size=0"]),
    ("empty_batch", lambda x, y: (x[:0], y[:0]), ValueError, ["empty batch"]),
    ("images_nan", lambda x, y: (_nan_images(x), y), ValueError, ["NaN"]),
]


@pytest.mark.parametrize("bad,error,words", [c[1:] for c in OBLIVIOUS_CASES], ids=[c[0] for c in OBLIVIOUS_CASES])
def test_evaluate_oblivious_rejects(net, batch, bad, error, words):
    counting = Counting(net)
    with pytest.raises(error) as info:
        _call(lambda x, y, **kw: evaluate_oblivious({"none": None}, counting, x, y, **{"steps": 1, **kw}),
              net, batch, bad)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert counting.calls <= 1


ATTACKED_MODEL_CASES = [
    ("eot_samples_zero", dict(threat_model="white-box+eot", eot_samples=0), ValueError, ["eot_samples=0"]),
    ("eot_samples_float", dict(threat_model="eot", eot_samples=2.0), TypeError, ["eot_samples must be an int"]),
    ("unknown", dict(threat_model="blackbox"), ValueError, ["Unknown threat model"]),
    ("transfer_without_surrogate", dict(threat_model="transfer"), ValueError, ["surrogate"]),
]


@pytest.mark.parametrize("kwargs,error,words", [c[1:] for c in ATTACKED_MODEL_CASES],
                         ids=[c[0] for c in ATTACKED_MODEL_CASES])
def test_attacked_model_rejects(net, kwargs, error, words):
    with pytest.raises(error) as info:
        attacked_model(purifier=Identity(), classifier=net, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    with pytest.raises(ValueError, match="samples=0"):
        EOT(net, 0)


# --- sanity_checks -------------------------------------------------------------------------------------------

SANITY_CASES = [
    ("eps_255_units", dict(eps=8), ValueError, ["eps=8 is above 1", "8/255 = 0.03137"]),
    ("eps_negative", dict(eps=-0.1), ValueError, ["eps=-0.1", "negative"]),
    ("eps_zero", dict(eps=0.0), ValueError, ["eps=0"]),
    ("steps_zero", dict(steps=0), ValueError, ["steps=0"]),
    ("eot_samples_zero", dict(eot_samples=0), ValueError, ["eot_samples=0"]),
    ("defense_runs_zero", dict(defense_runs=0), ValueError, ["defense_runs=0"]),
    ("eot_curve_decreasing", dict(eot_curve=(10, 1)), ValueError, ["eot_curve", "increasing"]),
    ("unknown_threat_model", dict(threat_model="whitebox"), ValueError, ["Unknown threat model"]),
    ("empty_batch", lambda x, y: (x[:0], y[:0]), ValueError, ["empty batch"]),
    ("one_channel", lambda x, y: (x[:, :1], y), ValueError, ["1 channel(s)"]),
] + IMAGE_AND_LABEL_CASES


@pytest.mark.parametrize("bad,error,words", [c[1:] for c in SANITY_CASES], ids=[c[0] for c in SANITY_CASES])
def test_sanity_checks_reject(net, batch, bad, error, words):
    counting = Counting(net)
    with pytest.raises(error) as info:
        _call(lambda x, y, **kw: sanity_checks(None, counting, x, y, **{"steps": 1, **kw}), net, batch, bad)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert counting.calls <= 1


class Detached(Purifier):
    """Claims to be differentiable but cuts the graph: a zero-gradient defense."""

    def forward(self, x):
        return x.detach().clone()


class GlobalNoise(Purifier):
    """Draws torch's global randomness without declaring `randomized`."""

    def forward(self, x):
        return (x + 0.05 * torch.randn_like(x)).clamp(0, 1)


class GlobalNoiseDeclared(GlobalNoise):
    """Declares `randomized` but still draws torch's global RNG instead of its own generator."""

    randomized = True


def _verdicts(table: pd.DataFrame) -> dict:
    return dict(zip(table["check"], table["passed"]))


def test_sanity_flags_a_detached_purifier_instead_of_crashing(net, batch):
    x, y = batch
    table = sanity_checks(Detached(), net, x, y, steps=1)
    verdicts = _verdicts(table)
    assert verdicts["gradients_nonzero"] == False and not all_passed(table)  # noqa: E712
    numbers = table.set_index("check").loc["gradients_nonzero"]
    assert "no gradient path" in numbers["numbers"] and "bpda" in numbers["meaning"]
    assert verdicts["monotone_in_eps"] is None  # not run, not crashed


def test_sanity_flags_undeclared_global_randomness(net, batch):
    x, y = batch
    table = sanity_checks(GlobalNoise(), net, x[:4], y[:4], steps=1, defense_runs=1)
    row = table.set_index("check").loc["randomness_declared"]
    assert row["passed"] == False  # noqa: E712
    assert "randomized=False" in row["numbers"] and "randomized = True" in row["meaning"]
    assert not all_passed(table)


def test_sanity_flags_a_random_purifier_that_ignores_its_generator(net, batch):
    x, y = batch
    table = sanity_checks(GlobalNoiseDeclared(), net, x[:4], y[:4], steps=1, defense_runs=1, eot_samples=2,
                          eot_curve=(1, 2))
    row = table.set_index("check").loc["randomness_declared"]
    assert row["passed"] == False and "self.generator" in row["meaning"]  # noqa: E712


def test_sanity_randomness_check_passes_for_honest_purifiers(net, batch):
    from lib.defenses.transforms import GaussianNoise

    x, y = batch
    for purifier in (Identity(), GaussianNoise(0.05, seed=1)):
        table = sanity_checks(purifier, net, x[:4], y[:4], steps=1, defense_runs=1, eot_samples=2, eot_curve=(1, 2))
        assert table.set_index("check").loc["randomness_declared", "passed"] == True, purifier  # noqa: E712


# --- train/eval mode and batch-norm statistics around run_attack ---------------------------------------------

def _state(model):
    modes = [m.training for m in model.modules()]
    stats = [t.clone() for name, t in model.state_dict().items() if "running" in name or "num_batches" in name]
    return modes, stats


def _same(a, b):
    return a[0] == b[0] and all(torch.equal(s, t) for s, t in zip(a[1], b[1]))


MODE_CASES = [(name, wrap) for name in ("pgd", "vnifgsm", "sinifgsm", "apgd_ce") for wrap in ("bare", "defended")]


@pytest.mark.parametrize("name,wrap", MODE_CASES, ids=[f"{n}-{w}" for n, w in MODE_CASES])
def test_run_attack_leaves_modes_and_batch_norm_untouched(net, batch, name, wrap):
    x, y = batch
    purifier = Identity().eval()
    model = net if wrap == "bare" else Defended(purifier, net)  # a fresh Defended is in training mode
    before, purifier_before = _state(net), purifier.training
    run_attack(build_attack(name, model, eps=8 / 255, steps=2), x, y, seed=0)
    assert _same(before, _state(net)), "run_attack changed the classifier's modes or batch-norm statistics"
    assert purifier.training == purifier_before
    with torch.no_grad():
        net(x)  # the symptom: the next forward pass updated the batch-norm statistics
    assert _same(before, _state(net))


@pytest.mark.parametrize("name", ["pgd", "vnifgsm", "apgd_ce"])
def test_a_model_in_training_mode_comes_back_in_training_mode_and_attacks_run_in_eval(batch, name):
    seed_everything(0)
    model = build_classifier("resnet_small", "shapes10", width=8)
    model.train()
    model.bn1.eval()  # a mixed state must come back exactly
    seen = []
    hook = model.bn1.register_forward_pre_hook(lambda m, inp: seen.append(model.training or any(
        s.training for s in model.modules())))
    before = _state(model)
    run_attack(build_attack(name, Defended(Identity(), model), eps=8 / 255, steps=2), *batch)
    hook.remove()
    assert seen and not any(seen), "the attack ran the model in training mode"
    assert _same(before, _state(model))


def test_modes_are_restored_when_the_attack_raises(batch):
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(build_classifier("resnet_small", "shapes10", width=8), Boom())
    model.train()
    model[0].bn1.eval()
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        run_attack(build_attack("pgd", model, steps=1), *batch)
    assert [m.training for m in model.modules()] == before


def test_evaluate_leaves_batch_norm_statistics_untouched(net, batch):
    x, y = batch
    before = _state(net)
    for attack in ("vnifgsm", "pgd"):
        evaluate(Identity(), net, x, y, attack=attack, threat_model="white-box", steps=1)
    with torch.no_grad():
        net(x)
    assert _same(before, _state(net))
