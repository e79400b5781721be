"""Training recipes (lib.models.recipes) and the classifier zoo (lib.models.zoo) on tiny shapes10 sets.

The full shapes10 train split (20,000 images) takes tens of seconds to generate on 2 cores, so these tests
draw a few hundred images from the same generator and seed (`lib.core.shapes.generate_shapes10`), and the zoo
test shrinks `lib.core.data.SHAPES10_SIZES` for its duration (clearing the generator's cache before and after).
"""
import math

import pytest
import torch

import lib.core.data
from lib.core.cache import ModelCache
from lib.models.classifiers import build_classifier
from lib.core.data import ImageData
from lib.core.settings import get_scale, seed_everything
from lib.core.shapes import CLASSES, generate_shapes10
from lib.models.recipes import RECIPES, Recipe, recipe_for, train_classifier
from lib.models.zoo import classifier_spec, get_classifier

METRICS = {"train_accuracy", "test_accuracy", "train_seconds", "train_images_per_second"}


@pytest.fixture(scope="module")
def shapes():
    """(train: 256 images, test: 64 images) from the shapes10 generator, seed 0."""
    images, labels = generate_shapes10(320, seed=0)
    train = ImageData("shapes10", "train", images[:256], labels[:256], CLASSES)
    test = ImageData("shapes10", "test", images[256:], labels[256:], CLASSES)
    return train, test


def _finite(metrics: dict) -> bool:
    return all(math.isfinite(v) for v in metrics.values())


# --- recipes -----------------------------------------------------------------------------------------

def test_recipe_rejects_unknown_name():
    with pytest.raises(ValueError, match="Unknown training recipe 'madry'") as info:
        Recipe(name="madry")
    assert all(name in str(info.value) for name in RECIPES)


def test_recipe_rejects_budget_in_255_units():
    with pytest.raises(ValueError, match="8/255"):
        Recipe(name="pgd_at", eps=8)
    with pytest.raises(ValueError, match="step_size"):
        Recipe(name="pgd_at", step_size=2)
    with pytest.raises(ValueError, match="negative"):
        Recipe(eps=-0.1)


def test_recipe_for_takes_sizes_from_the_scale():
    smoke = get_scale("smoke")
    natural = recipe_for("natural", smoke)
    assert (natural.epochs, natural.batch_size, natural.lr) == (smoke.epochs, smoke.batch_size, smoke.lr)
    robust = recipe_for("trades", smoke, beta=1.0)
    assert robust.epochs == smoke.robust_epochs and robust.steps == smoke.robust_steps and robust.beta == 1.0
    # with few steps the step size grows so that the steps still span the ε-ball
    assert robust.steps * robust.step_size >= robust.eps
    assert recipe_for("pgd_at", get_scale("paper")).step_size == pytest.approx(2 / 255)
    with pytest.raises(ValueError, match="Unknown training recipe"):
        recipe_for("nope", smoke)


# --- training runs -----------------------------------------------------------------------------------

def _train_natural(shapes) -> tuple[torch.nn.Module, dict]:
    train, test = shapes
    seed_everything(0)
    model = build_classifier("resnet_small", "shapes10", width=8)
    metrics = train_classifier(model, train, test, Recipe(epochs=1, batch_size=64, lr=0.1), device="cpu",
                               seed=0, progress=False)
    return model, metrics


def test_natural_training_metrics_and_exact_repeat(shapes):
    first, metrics = _train_natural(shapes)
    assert set(metrics) == METRICS and _finite(metrics)
    assert 0 <= metrics["train_accuracy"] <= 1 and 0 <= metrics["test_accuracy"] <= 1
    assert metrics["train_seconds"] > 0 and metrics["train_images_per_second"] > 0
    assert not first.training  # left in eval mode
    seed_everything(0)
    initial = build_classifier("resnet_small", "shapes10", width=8).state_dict()
    assert not torch.equal(initial["conv1.weight"], first.state_dict()["conv1.weight"])

    second, metrics2 = _train_natural(shapes)
    state1, state2 = first.state_dict(), second.state_dict()
    assert list(state1) == list(state2)
    different = [k for k in state1 if not torch.equal(state1[k], state2[k])]
    assert different == [], f"same seed, different weights: {different[:5]}"
    assert metrics2["train_accuracy"] == metrics["train_accuracy"]
    assert metrics2["test_accuracy"] == metrics["test_accuracy"]


@pytest.mark.parametrize("name", [r for r in RECIPES if r != "natural"])
def test_robust_recipe_runs_one_epoch(shapes, name):
    train, test = shapes
    small = ImageData("shapes10", "train", train.images[:128], train.labels[:128], CLASSES)
    seed_everything(0)
    model = build_classifier("resnet_small", "shapes10", width=8)
    before = model.conv1.weight.detach().clone()
    metrics = train_classifier(model, small, test, Recipe(name=name, epochs=1, batch_size=64, lr=0.1, steps=1),
                               device="cpu", seed=0, progress=False)
    assert set(metrics) == METRICS and _finite(metrics)
    assert not torch.equal(model.conv1.weight, before)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_eps_warmup_ramps_the_inner_attack_and_is_validated():
    from lib.models.recipes import _inner_attack, _ramp_attack

    recipe = Recipe(name="mart", eps_warmup=0.5, step_size=4 / 255)
    attack = _inner_attack(build_classifier("resnet_small", "shapes10", width=4), recipe)
    full = (attack.eps, attack.alpha)
    _ramp_attack(attack, full, recipe.eps_warmup, 0.0)
    assert attack.eps == 0 and attack.alpha == 0
    _ramp_attack(attack, full, recipe.eps_warmup, 0.25)
    assert attack.eps == pytest.approx(4 / 255) and attack.alpha == pytest.approx(2 / 255)
    _ramp_attack(attack, full, recipe.eps_warmup, 0.9)
    assert attack.eps == pytest.approx(8 / 255) and attack.alpha == pytest.approx(4 / 255)
    with pytest.raises(ValueError, match="eps_warmup"):
        Recipe(name="mart", eps_warmup=1.0)


def test_pgd_at_and_mart_warm_up_only_in_short_schedules_and_old_specs_keep_their_hash():
    for name in ("pgd_at", "mart"):
        assert recipe_for(name, get_scale("quick")).eps_warmup == 0.3
        assert recipe_for(name, get_scale("paper")).eps_warmup == 0.0  # the papers' recipes, unchanged
        assert classifier_spec("shapes10", name, get_scale("quick"), 0)["recipe"]["eps_warmup"] == 0.3
    assert recipe_for("trades", get_scale("quick")).eps_warmup == 0.0
    assert "eps_warmup" not in classifier_spec("shapes10", "trades", get_scale("quick"), 0)["recipe"]


# --- the zoo -----------------------------------------------------------------------------------------

@pytest.fixture
def small_shapes10(monkeypatch):
    """shapes10 splits of 600 / 200 images while a test runs (the smoke scale uses 512 / 128)."""
    lib.core.data._shapes10.cache_clear()
    monkeypatch.setitem(lib.core.data.SHAPES10_SIZES, "train", 600)
    monkeypatch.setitem(lib.core.data.SHAPES10_SIZES, "test", 200)
    yield
    lib.core.data._shapes10.cache_clear()


def test_zoo_trains_once_then_loads(tmp_path, small_shapes10):
    cache = ModelCache(tmp_path)
    model, record = get_classifier("shapes10", "natural", "smoke", seed=0, device="cpu", cache=cache,
                                   progress=False)
    assert record["cached"] is False
    assert set(record["metrics"]) == METRICS | {"trained_on"}  # the cache adds where it was trained
    assert record["spec"] == classifier_spec("shapes10", "natural", get_scale("smoke"), 0)
    assert record["spec"]["arch"] == "resnet_small" and record["spec"]["width"] == 8
    assert len(list(tmp_path.glob("classifier-*.pt"))) == 1

    again, record2 = get_classifier("shapes10", "natural", "smoke", seed=0, device="cpu", cache=cache,
                                    progress=False)
    assert record2["cached"] is True and record2["path"] == record["path"]
    assert record2["metrics"] == record["metrics"]
    assert not again.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert len(list(tmp_path.glob("*.pt"))) == 1


def test_zoo_spec_changes_with_what_determines_the_model():
    smoke = get_scale("smoke")
    base = classifier_spec("shapes10", "natural", smoke, 0)
    assert classifier_spec("shapes10", "natural", smoke, 0) == base
    assert classifier_spec("shapes10", "natural", smoke, 1) != base
    assert classifier_spec("digits", "natural", smoke, 0) != base
    assert classifier_spec("shapes10", "pgd_at", smoke, 0) != base
    assert classifier_spec("shapes10", "natural", smoke, 0, lr=0.05) != base
    assert classifier_spec("shapes10", "natural", get_scale("quick"), 0) != base


def test_progress_bar_is_plain_text_when_the_driver_asks(monkeypatch):
    from tqdm.std import tqdm as text_tqdm

    from lib.core.fit import progress_bar

    monkeypatch.setenv("PURIFY_TEXT_PROGRESS", "1")
    bar = progress_bar(total=3, disable=True)
    assert type(bar) is text_tqdm  # not tqdm.notebook's widget, even inside a kernel
    bar.close()
