"""Result cache: an evaluated cell stored by the hash of everything that determines it, like the model cache.

A cell is (defense, target, attack, threat model, images, seed): `result_key` builds its key from
- `defense`: the defense's spec (a learned defense's model-cache spec hash, a transform's name and keyword
  arguments), `target`: the classifier's spec hash,
- `attack`: the attack's settings (name, ε, steps, step size, EOT samples, defense runs, restarts, ...),
- `threat_model`, the evaluated images and labels (a SHA-256 of their bytes, shape and dtype), `seed`,
and `ResultCache.get_or_compute(key, compute)` returns the stored result row, or computes, stores and returns
it. A leaderboard re-run after one defense is added evaluates only that defense's cells (`ResultCache().forget(name)`
drops one defense's cells so that it alone is evaluated again), and a paper notebook
that evaluates the same cell reuses it. Entries are JSON files `<root>/<hash>.json` ($PURIFY_RESULT_CACHE,
default .cache/results), written to a temporary file and renamed. A file that cannot be read, or whose key
is not the one asked for, is an error naming the file and the fix: never silently recomputed over.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable

import torch

from lib.core.cache import spec_hash
from lib.core.dry_run import active_limit, limited_name
from lib.core.provenance import REPO
from lib.core.results import write_text_atomic

FORMAT = 1


class ResultCacheError(RuntimeError):
    """A cached result is corrupt or was stored for another cell."""


def default_root() -> Path:
    """$PURIFY_RESULT_CACHE, else .cache/results (.cache/results-limit<L> under a dry-run cap)."""
    return Path(os.environ.get("PURIFY_RESULT_CACHE", REPO / ".cache" / limited_name("results", active_limit())))


def images_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """SHA-256 of the images' and labels' bytes, shapes and dtypes: the same tensors give the same digest."""
    h = hashlib.sha256()
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def result_key(*, defense: dict, target: str, attack: dict, threat_model: str, x: torch.Tensor, y: torch.Tensor,
               seed: int) -> dict:
    """The key of one evaluated cell (see the module docstring); every field changes the hash."""
    if not isinstance(defense, dict) or not isinstance(attack, dict):
        raise TypeError("defense and attack must be dicts (the defense's spec, the attack's settings).")
    return {"defense": defense, "target": str(target), "attack": attack, "threat_model": str(threat_model),
            "images": images_digest(x, y), "n": int(len(y)), "seed": int(seed)}


def _jsonable(value):
    if isinstance(value, float) and math.isnan(value):
        return None  # JSON has no NaN; read back as NaN by `_restore`
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def _restore(row: dict) -> dict:
    return {k: float("nan") if v is None and k in ("accuracy", "ci_low", "ci_high") else v for k, v in row.items()}


class ResultCache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()

    def path(self, key: dict) -> Path:
        return self.root / f"{spec_hash(key)}.json"

    def get(self, key: dict) -> dict | None:
        """The stored row of `key`, or None when there is none."""
        path = self.path(key)
        if not path.exists():
            return None
        fix = f"Delete {path} to evaluate the cell again, or point PURIFY_RESULT_CACHE elsewhere."
        try:
            entry = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ResultCacheError(f"Cached result {path} is corrupt ({type(err).__name__}: {str(err)[:200]}). "
                                   f"{fix}") from err
        if not isinstance(entry, dict) or entry.get("format") != FORMAT or not {"key", "row"} <= entry.keys():
            raise ResultCacheError(f"Cached result {path} is not in this repository's format {FORMAT}. {fix}")
        if entry["key"] != json.loads(json.dumps(key, default=str)):
            raise ResultCacheError(f"Cached result {path} was stored for another cell ({entry['key']}). {fix}")
        return _restore(entry["row"])

    def put(self, key: dict, row: dict) -> Path:
        """Store a row atomically (a temporary file in the same folder, then a rename)."""
        entry = {"format": FORMAT, "key": key, "row": {k: _jsonable(v) for k, v in row.items()}}
        return write_text_atomic(json.dumps(entry, indent=1, sort_keys=True, default=str, allow_nan=False),
                                 self.path(key))

    def get_or_compute(self, key: dict, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """(row, True) from the cache, or (compute(), False) after storing it."""
        row = self.get(key)
        if row is not None:
            return row, True
        row = compute()
        self.put(key, row)
        return row, False

    def forget(self, defense: str) -> list[Path]:
        """Delete every stored cell of the defense named `defense` (its key's defense "name"), so that the next
        run evaluates that defense again and only it; returns the deleted files. A corrupt entry is an error,
        as in `get` (it cannot be told apart from one of this defense's)."""
        matching = []  # read every entry first, so that a corrupt one stops the call before anything is deleted
        for path in sorted(self.root.glob("*.json")) if self.root.is_dir() else []:
            try:
                entry = json.loads(path.read_text())
                name = entry["key"]["defense"].get("name")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise ResultCacheError(f"Cached result {path} is corrupt ({type(err).__name__}); delete it by hand "
                                       "and run forget again.") from err
            if name == defense:
                matching.append(path)
        for path in matching:
            path.unlink()
        return matching
