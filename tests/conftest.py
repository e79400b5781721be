"""Shared fixtures: a small natural classifier on the embedded shapes10 data, trained in seconds."""
import pytest
import torch

from lib.classifiers import build_classifier
from lib.data import load_dataset
from lib.settings import seed_everything
from lib.training import Recipe, train_classifier


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
