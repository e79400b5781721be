"""Named target classifiers, trained once through the model cache and loaded by every later notebook.

`get_classifier(dataset, recipe, scale, seed)` returns the same model for the same arguments in any
notebook: the spec below is everything that determines it. Bump RECIPE_VERSION when the training code
changes what a spec produces, so stale checkpoints are not mistaken for new ones.
"""
from __future__ import annotations

import dataclasses

from torch import nn

from lib.core.cache import ModelCache
from lib.models.classifiers import build_classifier
from lib.core.data import data_spec, load_dataset
from lib.core.fit import trained
from lib.core.settings import Scale, get_scale, resolve_device
from lib.models.recipes import recipe_for, train_classifier

RECIPE_VERSION = 1
# an architecture's own recipe settings, unless the caller overrides them: the plain 13-convolution vgg_small
# collapses at the scale's one-cycle peak lr 0.2 (test accuracy 0.11) and reaches 0.986 at 0.02 (quick, 6 epochs)
ARCH_RECIPE = {"vgg_small": {"lr": 0.02}}


def classifier_spec(dataset: str, recipe_name: str, scale: Scale, seed: int, arch: str | None = None, *,
                    data_root=None, **recipe_overrides) -> dict:
    """Everything that determines a trained classifier; data_root matters only for an image folder (data_spec)."""
    recipe_overrides = {**ARCH_RECIPE.get(arch or scale.classifier, {}), **recipe_overrides}
    recipe = dataclasses.asdict(recipe_for(recipe_name, scale, **recipe_overrides))
    if not recipe["eps_warmup"]:
        del recipe["eps_warmup"]  # added later: left out when off, so earlier checkpoints keep their specs
    return {
        "kind": "classifier",
        "version": RECIPE_VERSION,
        "arch": arch or scale.classifier,
        "width": scale.width,
        **data_spec(dataset, data_root),  # {"dataset": name}, plus the folder's identity for an image folder
        "n_train": scale.n_train,
        "n_test": scale.n_test,
        "recipe": recipe,
        "seed": seed,
    }


def get_classifier(dataset: str = "shapes10", recipe: str = "natural", scale: str | Scale = "quick",
                   seed: int = 0, *, arch: str | None = None, device="auto", data_root=None,
                   cache: ModelCache | None = None, progress: bool = True, **recipe_overrides
                   ) -> tuple[nn.Module, dict]:
    """A trained classifier (eval mode, on device) and its record (metrics, cache path, cached or not)."""
    scale = get_scale(scale)
    device = resolve_device(device)
    spec = classifier_spec(dataset, recipe, scale, seed, arch, data_root=data_root, **recipe_overrides)
    recipe_obj = recipe_for(recipe, scale, **{**ARCH_RECIPE.get(arch or scale.classifier, {}), **recipe_overrides})

    def train(model: nn.Module) -> dict:
        train_set = load_dataset(dataset, "train", data_root).subset(scale.n_train, seed)
        test_set = load_dataset(dataset, "test", data_root).subset(scale.n_test, seed)
        return train_classifier(model, train_set, test_set, recipe_obj, device=device, seed=seed, progress=progress)

    return trained(spec, lambda: build_classifier(spec["arch"], dataset, scale.width, data_root=data_root), train,
                   cache=cache, device=device, seed=seed)
