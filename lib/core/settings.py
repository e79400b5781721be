"""Scales, run settings, seeding, devices and input checks shared by every notebook.

A *scale* fixes how big an experiment is (data size, model width, epochs, attack steps, images
evaluated) and nothing else; a notebook run at `smoke`, `quick` or `paper` runs the same cells.
"""
from __future__ import annotations

import dataclasses
import math
import operator
import os
import random
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from lib.core.dry_run import active_limit, limit_scale, limit_settings, limited_name


@dataclass(frozen=True)
class Scale:
    """Everything a scale decides. Units in the comments."""

    name: str
    # data
    n_train: int  # training images drawn from the dataset (all of it when larger)
    n_test: int  # test images used for clean accuracy
    n_eval: int  # test images attacked (attacks are the expensive part)
    # target classifier
    classifier: str  # architecture name in lib.models.classifiers
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
    limit: int | None = None  # a dry run's cap in batches (lib.core.dry_run); None for a real run

    @property
    def folder(self) -> str:
        """The output folder name: the scale's, or `<name>-limit<L>` for a capped dry run."""
        return limited_name(self.name, self.limit)


SCALES: dict[str, Scale] = {
    # every cell runs; numbers mean nothing
    "smoke": Scale(
        name="smoke", n_train=512, n_test=128, n_eval=64, classifier="resnet_small", width=8,
        epochs=1, batch_size=128, lr=0.1, robust_epochs=1, robust_steps=2,
        attack_steps=3, eot_samples=2, defense_runs=2,
    ),
    # the paper's trends on the embedded data, minutes on 2 CPU cores. Width 8, not 16: on shapes10 it reaches
    # the same clean accuracy (natural 0.98) and PGD-AT 0.42-0.58 at PGD-20 depending on the thread count it
    # trained with (width 16 gave 0.48), at a third of the cost of every attack and training step (1600 vs 500
    # images/s for a forward-backward pass on 2 cores)
    "quick": Scale(
        name="quick", n_train=10_000, n_test=1_000, n_eval=500, classifier="resnet_small", width=8,
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
    """The frozen settings of a scale, by name; capped when a dry-run limit is in force (lib.core.dry_run)."""
    if isinstance(name, Scale):
        return name
    if name not in SCALES:
        raise ValueError(f"Unknown scale {name!r}: choose one of {sorted(SCALES)}.")
    limit = active_limit()
    return limit_scale(SCALES[name], limit) if limit else SCALES[name]


def scale_settings(table: Mapping[str, Any], scale: str | Scale, method: str):
    """A method's own settings at a scale: `table[scale name]` (the SETTINGS of lib.defenses.hgd, lib.defenses.dir_denoiser, ...)."""
    name = scale.name if isinstance(scale, Scale) else scale
    if name not in table:
        raise ValueError(f"Unknown scale {name!r} for {method}: choose one of {sorted(table)}.")
    limit = active_limit()
    return limit_settings(table[name], limit) if limit else table[name]


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


def _as_float(value, name: str, what: str) -> float:
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(f"{name} must be a number, {what}; got {value!r} ({type(value).__name__}).")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number, {what}; got {value!r} ({type(value).__name__}).") from err


def check_eps(eps: float, name: str = "eps") -> float:
    """A budget is a float in pixel units in [0, 1]; 8 means the user forgot the /255."""
    eps = _as_float(eps, name, "a float in pixel units such as 8/255")
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


def check_radius(eps: float, name: str = "eps") -> float:
    """An L2 radius (pgd_l2's eps and step): a finite, non-negative float; unlike an L∞ budget it may exceed 1."""
    eps = _as_float(eps, name, "an L2 radius in pixel units such as 0.5")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name}={eps:g} is not a finite non-negative number; an L2 radius in pixel units is a "
                         "float ≥ 0 such as 0.5.")
    return eps


def check_count(value, name: str, minimum: int = 1, hint: str = "") -> int:
    """A count (steps, samples, runs, batch size): an int ≥ `minimum`. Floats and bools are a TypeError."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int ≥ {minimum}; got {value!r} ({type(value).__name__})."
                        + (f" {hint}" if hint else "")) from None
    if value < minimum:
        raise ValueError(f"{name}={value} is below {minimum}." + (f" {hint}" if hint else ""))
    return value


def check_images(x: torch.Tensor, name: str = "images", *, channels: int | None = None,
                 nonempty: bool = False) -> torch.Tensor:
    """Images are float NCHW tensors in [0, 1]; uint8, 0-255 floats or NaN are a clear error.

    channels: the channel count the consumer expects (None: any). nonempty: an empty batch is an error
    (an accuracy over 0 images is NaN). One min/max reduction over the batch.
    """
    _check_batch_shape(x, name, channels)
    if not x.numel():
        if nonempty:
            raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}): there is nothing to evaluate "
                             "(an accuracy over 0 images is NaN); pass at least one image.")
        return x
    lo, hi = torch.aminmax(x.detach())
    lo, hi = lo.item(), hi.item()
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{name} contains NaN; images must be finite floats in [0, 1] (check the data loading "
                         "or the purifier that produced them).")
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{name} has values in [{lo:.3g}, {hi:.3g}], outside [0, 1]. Images are in pixel "
            "units: divide 0-255 data by 255, and do not normalise (normalisation is the classifier's first layer)."
        )
    return x


def _check_batch_shape(x: torch.Tensor, name: str, channels: int | None) -> None:
    """A float (N, C, H, W) tensor with `channels` channels (any when None)."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor of images in [0, 1]; got {getattr(x, 'dtype', type(x))}. "
                        "Convert uint8 images with x.float() / 255.")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a batch shaped (N, C, H, W); got shape {tuple(x.shape)}.")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(_channel_message(name, x.shape[1], channels))


def _channel_message(name: str, got: int, expected: int) -> str:
    fix = (f" For grayscale images repeat the channel: x.expand(-1, {expected}, -1, -1)." if got == 1 else
           " Use a classifier built for this dataset (build_classifier(arch, dataset)).")
    return f"{name} has {got} channel(s) but the classifier expects {expected}.{fix}"


def check_classifier_input(x: torch.Tensor, channels: int | None, name: str = "x") -> None:
    """The cheap check at a classifier's first layer: a float NCHW batch with the right channels, max ≤ 1, no NaN.

    Called on every forward pass (attack loops make thousands), so it costs one max-reduction, and only the
    upper bound is checked (0-255 images and NaN both fail it; a NaN anywhere makes the max NaN).
    """
    _check_batch_shape(x, name, channels)
    if x.numel():
        hi = x.detach().max().item()
        if not hi <= 1 + 1e-4:  # also catches NaN; the slack absorbs straight-through clamps (x + (c − x).detach())
            problem = "contains NaN" if math.isnan(hi) else f"has values up to {hi:.3g}, above 1"
            raise ValueError(f"{name} {problem}; the classifier takes images in [0, 1] (normalisation is its first "
                             "layer): divide 0-255 data by 255 and pass finite values.")


def check_labels(y: torch.Tensor, n: int, n_classes: int | None = None, name: str = "y") -> torch.Tensor:
    """Labels are a 1-D integer tensor with one class index in [0, n_classes) per image."""
    if not torch.is_tensor(y) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices (torch.long); got "
                        f"{getattr(y, 'dtype', type(y).__name__)}. Convert with {name}.long().")
    if y.dim() != 1:
        raise ValueError(f"{name} must be 1-D, one class index per image; got shape {tuple(y.shape)} "
                         "(one-hot labels: use y.argmax(1); a column: y.flatten()).")
    if len(y) != n:
        raise ValueError(f"{name} holds {len(y)} labels for {n} images; pass one label per image.")
    if len(y):
        lo, hi = (v.item() for v in torch.aminmax(y))
        if lo < 0 or (n_classes is not None and hi >= n_classes):
            bound = f"[0, {n_classes})" if n_classes is not None else "[0, n_classes)"
            raise ValueError(f"{name} holds class indices in [{lo}, {hi}], outside {bound}; labels are class "
                             "indices counted from 0.")
    return y


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
