"""One trainer contract, one training loop, one cached getter: how every learned model in lib is trained.

    class MyTrainer:                      # the contract
        model: nn.Module                  # what is trained
        def step(self, *batch) -> dict:   # one optimisation step on a batch; returns its losses (floats)
        def schedule(self, step, total):  # optional: called before each step (lr schedules, ε warm-up)

    log = fit(trainer, epoch_batches(data, batch_size, seed, device), epochs=3, desc="train X")
    model, record = trained(spec, build, train, cache=cache, device=device, seed=seed)

`fit` owns the epochs, the schedule hook, the progress bar and the per-epoch log (each loss averaged over
the epoch's images); the trainer owns only what one step does. A batch is (x, y) for a labelled data set
(`epoch_batches`), or what a trainer's own batches function yields (HGD and APE-GAN learn from stored
(clean, adversarial) pairs). `trained` is spec → build → train → cache:
the model of a spec, loaded when cached, else built (seeded) and trained, with the spec in its record.
`Frozen(model)` holds a classifier fixed while a purifier trains through it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import torch
from torch import nn

from lib.core import estimate
from lib.core.cache import ModelCache
from lib.core.data import ImageData, iterate_batches
from lib.core.settings import seed_everything


def progress_bar(**kwargs):
    """A tqdm bar: a widget in JupyterLab (tqdm.auto), plain text when $PURIFY_TEXT_PROGRESS is set (the
    papermill driver sets it, so kept notebooks hold the bar's last line, not widget state)."""
    if os.environ.get("PURIFY_TEXT_PROGRESS"):
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(**kwargs)


class Trainer(Protocol):
    model: nn.Module

    def step(self, *batch: torch.Tensor) -> dict: ...


@dataclass
class FitLog:
    """What `fit` measured: per-epoch means of every loss a step returned, the last step's, time and counts."""

    history: dict[str, list[float]] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def epoch_batches(data: ImageData, batch_size: int, seed: int, device, *, drop_last: bool | None = None
                  ) -> Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]:
    """epoch -> that epoch's shuffled (x, y) batches: a fresh order seeded by (seed, epoch), the last partial
    batch dropped when there is more than one batch (the order every trainer in lib has always used)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1.")
    drop = len(data) >= batch_size if drop_last is None else drop_last

    def batches(epoch: int):
        return iterate_batches(data, batch_size, shuffle=True, seed=seed * 1000 + epoch, device=device, drop_last=drop)
    batches.steps_per_epoch = max(len(data) // batch_size, 1) if drop else -(-len(data) // batch_size)
    return batches


def _float(value) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def fit(trainer: Trainer, batches: Callable[[int], Iterable], *, epochs: int, desc: str, progress: bool = True,
        show: tuple[str, ...] | None = None, steps_per_epoch: int | None = None) -> FitLog:
    """Train `trainer.model` for `epochs` epochs of `batches(epoch)`; returns the FitLog.

    The model is put in train mode first and comes back in eval mode (ready to evaluate and cache); a step
    may switch it (e.g. to eval while it crafts adversarial examples). `show`: the losses on the progress
    bar (default: all of them). `steps_per_epoch` sizes the progress bar and the schedule's `total`
    (default: `batches.steps_per_epoch`).
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be a positive integer.")
    per_epoch = steps_per_epoch or getattr(batches, "steps_per_epoch", None)
    if per_epoch is None:
        raise ValueError("fit needs steps_per_epoch (the batches function does not say how many it yields).")
    total = epochs * per_epoch
    schedule = getattr(trainer, "schedule", None)
    log, start = FitLog(), time.perf_counter()
    first_step = 0.0  # for lib.core.estimate: the first step carries warm-up that later ones do not
    estimate.fit_started()
    trainer.model.train()
    bar = progress_bar(total=total, desc=desc, disable=not progress, leave=False)
    for epoch in range(epochs):
        sums: dict[str, float] = {}
        count = 0
        for batch in batches(epoch):
            if schedule is not None:
                schedule(log.steps, total)
            losses = {k: _float(v) for k, v in trainer.step(*batch).items()}
            n = len(batch[0])
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v * n
            count += n
            log.steps, log.images, log.last = log.steps + 1, log.images + n, losses
            if log.steps == 1:
                first_step = time.perf_counter() - start
            bar.update()
            bar.set_postfix({"epoch": epoch + 1, **{k: f"{losses[k]:.4f}" for k in (show or losses) if k in losses}})
        for k, v in sums.items():
            log.history.setdefault(k, []).append(v / max(count, 1))
    bar.close()
    trainer.model.eval()
    log.seconds = time.perf_counter() - start
    estimate.note_fit(log.seconds, log.steps, first_step)
    return log


def trained(spec: dict, build: Callable[[], nn.Module], train: Callable[[nn.Module], dict], *,
            cache: ModelCache | None = None, device="cpu", seed: int | None = None) -> tuple[nn.Module, dict]:
    """spec → build → train → cache: the model of `spec` (eval mode, on device) and its record.

    Loaded when the cache has it; else `build()` (after seeding with `seed`, so the same spec starts from the
    same weights) and `train(model) -> metrics`, then saved. The record has the metrics, the path, the hash,
    whether it was cached, and the spec.
    """
    def seeded_build() -> nn.Module:
        if seed is not None:
            seed_everything(seed)
        return build()

    def timed_train(model: nn.Module) -> dict:
        with estimate.timed("train", spec=spec, model=spec.get("kind", "model")):  # only a cost estimate times it
            return train(model)

    model, record = (cache or ModelCache()).load_or_train(spec, seeded_build, timed_train, device)
    record["spec"] = spec
    return model, record


class Frozen:
    """`with Frozen(model):` holds a classifier fixed (eval mode, no parameter gradients) and restores its mode
    and flags afterwards; a purifier trained against it gets gradients through it but never changes it.
    `None` is allowed (nothing to freeze)."""

    def __init__(self, model: nn.Module | None):
        self.model = model

    def __enter__(self):
        if self.model is not None:
            self.training = self.model.training
            self.flags = [p.requires_grad for p in self.model.parameters()]
            self.model.eval().requires_grad_(False)
        return self.model

    def __exit__(self, *exc):
        if self.model is not None:
            for p, flag in zip(self.model.parameters(), self.flags):
                p.requires_grad_(flag)
            self.model.train(self.training)
