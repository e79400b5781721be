"""Scales, run settings, seeding, devices and input checks shared by every notebook.

A *scale* fixes how big an experiment is (data size, model width, epochs, attack steps, images
evaluated) and nothing else; a notebook run at `smoke`, `quick` or `paper` runs the same cells.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch


@dataclass(frozen=True)
class Scale:
    """Everything a scale decides. Units in the comments."""

    name: str
    # data
    n_train: int  # training images drawn from the dataset (all of it when larger)
    n_test: int  # test images used for clean accuracy
    n_eval: int  # test images attacked (attacks are the expensive part)
    # target classifier
    classifier: str  # architecture name in lib.classifiers
    width: int  # base channel width of the small ResNet (ignored by fixed architectures)
    epochs: int  # natural training epochs
    batch_size: int  # training batch size
    lr: float  # peak SGD learning rate (one-cycle schedule)
    # robust training (PGD-AT, TRADES, MART, fast AT)
    robust_epochs: int
    robust_steps: int  # PGD steps per training example
    # attacks
    attack_steps: int  # PGD/BIM iterations for evaluation (the papers' PGD-20)
    eot_samples: int  # draws of a random defense's randomness per gradient
    defense_runs: int  # independent runs of a random defense at evaluation (worst case / vote)


SCALES: dict[str, Scale] = {
    # every cell runs; numbers mean nothing
    "smoke": Scale(
        name="smoke", n_train=512, n_test=128, n_eval=64, classifier="resnet_small", width=8,
        epochs=1, batch_size=128, lr=0.1, robust_epochs=1, robust_steps=2,
        attack_steps=3, eot_samples=2, defense_runs=2,
    ),
    # the paper's trends on the embedded data, minutes on 2 CPU cores
    "quick": Scale(
        name="quick", n_train=10_000, n_test=1_000, n_eval=500, classifier="resnet_small", width=16,
        epochs=6, batch_size=128, lr=0.2, robust_epochs=6, robust_steps=3,
        attack_steps=20, eot_samples=10, defense_runs=3,
    ),
    # the papers' own setting on one GPU (DIR: ResNet-18, AT with 5 steps, PGD-20 evaluation)
    "paper": Scale(
        name="paper", n_train=50_000, n_test=10_000, n_eval=10_000, classifier="resnet18", width=64,
        epochs=100, batch_size=128, lr=0.1, robust_epochs=100, robust_steps=5,
        attack_steps=20, eot_samples=20, defense_runs=5,
    ),
}


def get_scale(name: str | Scale) -> Scale:
    """The frozen settings of a scale, by name."""
    if isinstance(name, Scale):
        return name
    if name not in SCALES:
        raise ValueError(f"Unknown scale {name!r}: choose one of {sorted(SCALES)}.")
    return SCALES[name]


def scale_settings(table: Mapping[str, Any], scale: str | Scale, method: str):
    """A method's own settings at a scale: `table[scale name]` (the SETTINGS of lib.hgd, lib.dir, ...)."""
    name = scale.name if isinstance(scale, Scale) else scale
    if name not in table:
        raise ValueError(f"Unknown scale {name!r} for {method}: choose one of {sorted(table)}.")
    return table[name]


def resolve_scale(name: str | None) -> Scale:
    """The scale a notebook asked for; None means $PURIFY_SCALE, else 'quick'.

    nbval executes notebooks as committed, so the test suite selects `smoke` through the environment.
    """
    return get_scale(name or os.environ.get("PURIFY_SCALE", "quick"))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; anything else is passed to torch.device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"Unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'.") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was requested but CUDA is not available; use 'auto' or 'cpu'.")
    return resolved


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that CPU runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # deterministic cuDNN choices; CPU kernels are deterministic already
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def check_eps(eps: float, name: str = "eps") -> float:
    """A budget is a float in pixel units in [0, 1]; 8 means the user forgot the /255."""
    eps = float(eps)
    if not math.isfinite(eps):
        raise ValueError(f"{name}={eps} is not a finite number; budgets are floats in [0, 1] such as 8/255.")
    if eps > 1:
        raise ValueError(
            f"{name}={eps:g} is above 1, but budgets are in pixel units of images in [0, 1]: "
            f"did you mean {eps:g}/255 = {eps / 255:.5f}?"
        )
    if eps < 0:
        raise ValueError(f"{name}={eps:g} is negative; a budget is a non-negative float such as 8/255.")
    return eps


def check_images(x: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Images are float NCHW tensors in [0, 1]; uint8 or 0-255 floats are a clear error."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1]; got {getattr(x, 'dtype', type(x))}. "
                        "Convert uint8 images with x.float() / 255.")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a batch shaped (N, C, H, W); got shape {tuple(x.shape)}.")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"{name} lie in [{x.min().item():.3g}, {x.max().item():.3g}], outside [0, 1]. Images are in pixel "
            "units: divide 0-255 data by 255, and do not normalise (normalisation is the classifier's first layer)."
        )
    return x


def validate_parameters(params: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Check a notebook's parameters against its defaults: no unknown keys, matching types.

    Papermill passes `-p` values as strings or numbers; an int given where a float is expected is accepted,
    anything else of the wrong type is an error naming the key.
    """
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"Unknown parameter(s) {unknown}; known parameters are {sorted(defaults)}.")
    checked = dict(defaults)
    for key, value in params.items():
        default = defaults[key]
        if default is None or value is None or isinstance(value, type(default)):
            checked[key] = value
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            checked[key] = float(value)
        else:
            raise TypeError(f"Parameter {key}={value!r} should be a {type(default).__name__} like {default!r}.")
    return checked


def as_dict(obj) -> dict[str, Any]:
    """A frozen dataclass as a plain dict (for hashing and provenance)."""
    return dataclasses.asdict(obj)
