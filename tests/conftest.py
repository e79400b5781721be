"""Shared fixtures: a small natural classifier on the embedded shapes10 data, trained in seconds."""
import pytest
import torch

from lib.models.classifiers import build_classifier
from lib.core.data import load_dataset
from lib.core.settings import seed_everything
from lib.models.recipes import Recipe, train_classifier


@pytest.fixture(scope="session")
def shapes_model():
    """(classifier, x_test, y_test): resnet_small (width 8) on 5000 shapes10 images, eval mode."""
    seed_everything(0)
    train = load_dataset("shapes10", "train").subset(5000, seed=0)
    test = load_dataset("shapes10", "test").subset(500, seed=0)
    model = build_classifier("resnet_small", "shapes10", width=8)
    train_classifier(model, train, test, Recipe(epochs=5, batch_size=128, lr=0.2), device="cpu", progress=False)
    x, y = test.subset(48, seed=0).tensors()
    return model.eval(), x, y


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.quick` tests (quick-scale results from the model cache) run only with PURIFY_QUICK_TESTS=1;
    `@pytest.mark.paper_dry_run` tests (every notebook at paper scale under the dry-run cap, about an hour on
    2 cores) only with PURIFY_DRY_RUN_TESTS=1."""
    import os

    gates = {"quick": ("PURIFY_QUICK_TESTS", "quick-scale check: set PURIFY_QUICK_TESTS=1 (make test-quick)"),
             "paper_dry_run": ("PURIFY_DRY_RUN_TESTS", "paper dry run: set PURIFY_DRY_RUN_TESTS=1 (make test-paper)")}
    for marker, (variable, reason) in gates.items():
        if os.environ.get(variable) == "1":
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if item.get_closest_marker(marker) is not None:
                item.add_marker(skip)
