"""Model cache: load-or-train keyed by a hash of everything that determines a model.

A *spec* is a JSON-able dict (architecture, recipe, dataset, scale-dependent sizes, seed, code version of
the recipe). The checkpoint `<root>/<kind>-<hash>.pt` holds the spec, the state dict and the training
metrics. Writes go to a temporary file in the same folder, then `os.replace`, so a crash never leaves a
half-written checkpoint under the final name. Training holds a lock file `<kind>-<hash>.pt.lock` (filelock),
so two jobs that need the same uncached model (parallel notebooks, Slurm array tasks on a shared disk) never
both train it: the second waits, then loads what the first saved. Loads use `weights_only=True`. A file that cannot be read,
or whose spec or tensors do not match what was asked for, is an error naming the file: never a silent
retrain over it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock
from torch import nn

from lib.core.dry_run import active_limit, limited_name
from lib.core.provenance import REPO, provenance

FORMAT = 1


class CheckpointError(RuntimeError):
    """A cached checkpoint is corrupt or does not match the requested model."""


def default_root() -> Path:
    """$PURIFY_CACHE, else .cache/models (.cache/models-limit<L> under a dry-run cap, so that capped models
    never stand in for real ones)."""
    return Path(os.environ.get("PURIFY_CACHE", REPO / ".cache" / limited_name("models", active_limit())))


def spec_hash(spec: dict) -> str:
    """A stable short hash of a spec (key order does not matter)."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _normalise(spec: dict) -> dict:
    """The spec as it round-trips through JSON (tuples become lists), so comparisons are exact."""
    return json.loads(json.dumps(spec, sort_keys=True, default=str))


class ModelCache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()

    def path(self, spec: dict) -> Path:
        kind = str(spec.get("kind", "model")).replace("/", "_")
        return self.root / f"{kind}-{spec_hash(spec)}.pt"

    def exists(self, spec: dict) -> bool:
        return self.path(spec).exists()

    def save(self, spec: dict, model: nn.Module, metrics: dict) -> Path:
        """Write atomically: a temporary file in the same folder, then rename over the final name."""
        path = self.path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT,
            "spec": json.dumps(_normalise(spec), sort_keys=True),
            "metrics": json.dumps(metrics, default=float),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o644)  # mkstemp files are private; a shared cache must be readable
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def load(self, spec: dict, model: nn.Module) -> dict:
        """Load the checkpoint of `spec` into `model` (strictly); returns its training metrics."""
        path = self.path(spec)
        fix = f"Delete {path} to retrain it, or point PURIFY_CACHE elsewhere."
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise CheckpointError(f"Checkpoint {path} is corrupt or not a checkpoint ({type(err).__name__}: "
                                  f"{str(err)[:200]}). {fix}") from err
        if (not isinstance(payload, dict) or payload.get("format") != FORMAT
                or not {"spec", "metrics", "state_dict"} <= payload.keys()):
            raise CheckpointError(f"Checkpoint {path} is not in this repository's format {FORMAT}. {fix}")
        stored = json.loads(payload["spec"])
        if stored != _normalise(spec):
            raise CheckpointError(f"Checkpoint {path} was trained for a different spec ({stored}) than the one "
                                  f"requested ({_normalise(spec)}). {fix}")
        try:
            model.load_state_dict(payload["state_dict"], strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"Checkpoint {path} does not fit the model's architecture: "
                                  f"{str(err)[:300]}. {fix}") from err
        return json.loads(payload["metrics"])

    def load_or_train(self, spec: dict, build: Callable[[], nn.Module],
                      train: Callable[[nn.Module], dict], device="cpu") -> tuple[nn.Module, dict]:
        """The model of `spec`: loaded when cached, else built, trained by `train(model)` and saved.

        Returns (model on `device` in eval mode, record) where record has the metrics, the path and
        whether it came from the cache.
        """
        model = build()
        path = self.path(spec)
        start = time.perf_counter()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{path}.lock"):
                if not path.exists():  # still missing once the lock is ours: nobody trained it while we waited
                    metrics = train(model)
                    # where and when it was trained: cached times (seconds per epoch) mean little without the machine
                    metrics.setdefault("trained_on", provenance(device))
                    self.save(spec, model, metrics)
                    record = {"cached": False}
                    record.update(metrics=metrics, path=str(path), hash=spec_hash(spec))
                    return model.to(device).eval(), record
        metrics = self.load(spec, model)
        record = {"cached": True, "load_seconds": time.perf_counter() - start}
        record.update(metrics=metrics, path=str(path), hash=spec_hash(spec))
        return model.to(device).eval(), record
