"""The dry-run cap: a scale shrunk to a few batches so that every code path of its notebooks runs once.

    python -m lib.run.reproduce --scale paper --limit 2        # sets PURIFY_LIMIT=2 for every notebook it runs
    PURIFY_LIMIT=2 jupyter lab                                  # the same cap for an interactive session

A limit L keeps everything that decides *which* code runs (architectures, widths, patch sizes, datasets and
their on-disk formats, attacks, threat models, the method settings' choices) and caps only how much of it
runs: L training batches of at most BATCH images (fewer where a method's settings set `dry_run_batch`) for one
epoch, L evaluation batches of EVAL_BATCH images, attacks and inner maximisations of at most MAX_STEPS steps
(AutoAttack's too, and MAX_QUERIES for its Square), at most MAX_DRAWS EOT draws and defense runs. Numbers from
a capped run mean nothing; it proves that the `paper` path constructs and runs.

A capped run never mixes with real results: models go to `.cache/models-limit<L>` and results to
`.cache/results-limit<L>` (unless $PURIFY_CACHE / $PURIFY_RESULT_CACHE say otherwise), and outputs to
`papermill_runs/<scale>-limit<L>/` and `figures/<scale>-limit<L>/` (ignored by git).
"""
from __future__ import annotations

import dataclasses
import os

from lib.core import estimate

LIMIT_ENV = "PURIFY_LIMIT"
BATCH = 32  # training batch size under a limit (at most; the batch size chooses no code path)
EVAL_BATCH = 16  # images per evaluation batch under a limit (more than CIFAR-10 has classes: per-class analyses need it)
MAX_STEPS = 2  # attack / inner-maximisation iterations under a limit
MAX_DRAWS = 2  # EOT draws and runs of a random defense under a limit
MAX_QUERIES = 10  # queries of a score-based attack (Square inside AutoAttack) under a limit

# method-settings fields (lib.defenses.*.SETTINGS) that count training images and evaluation images
_TRAIN_COUNTS = ("n_train", "source_n_train")
_EVAL_COUNTS = ("n_test", "n_eval", "n_layerwise", "n_adaptive")


def active_limit() -> int | None:
    """The cap in force ($PURIFY_LIMIT), or None. A value that is not a positive int is an error naming the fix."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return None
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"${LIMIT_ENV}={text!r} is not a positive int; set it to the number of batches a dry run "
                         f"keeps (for example {LIMIT_ENV}=2), or unset it for a full run.")
    return limit


def limited_name(name: str, limit: int | None) -> str:
    """A folder's name for a run under `limit`: `name`, or `<name>-limit<L>` for a capped run (output and cache
    folders alike, so capped results never land beside real ones)."""
    return f"{name}-limit{limit}" if limit else name


def _cap(kind: str, value: int, most: int, scale_field: str | None = None) -> int:
    capped = min(value, most)
    estimate.note_ratio(kind, value, capped, scale_field)  # what the cut costs at full size (lib.core.estimate)
    return capped


def cap_steps(steps: int) -> int:
    """Attack iterations under the active limit (unchanged without one)."""
    if active_limit() and isinstance(steps, int) and steps > 0:
        return _cap("steps", steps, MAX_STEPS, "attack_steps")
    return steps


def cap_draws(draws: int) -> int:
    """EOT draws under the active limit (unchanged without one)."""
    return _cap("draws", draws, MAX_DRAWS, "eot_samples") if active_limit() else draws


def cap_queries(queries: int) -> int:
    """A score-based attack's query budget under the active limit (unchanged without one)."""
    return _cap("queries", queries, MAX_QUERIES) if active_limit() else queries


def limit_scale(scale, limit: int):
    """A lib.core.settings.Scale capped to `limit` batches (same name, so every table keyed by it still applies)."""
    batch = min(scale.batch_size, BATCH)
    capped = dataclasses.replace(
        scale, batch_size=batch, n_train=min(scale.n_train, limit * batch), n_test=min(scale.n_test, 2 * limit * EVAL_BATCH),
        n_eval=min(scale.n_eval, limit * EVAL_BATCH), epochs=1, robust_epochs=1,
        robust_steps=min(scale.robust_steps, MAX_STEPS), attack_steps=min(scale.attack_steps, MAX_STEPS),
        eot_samples=min(scale.eot_samples, MAX_DRAWS), defense_runs=min(scale.defense_runs, MAX_DRAWS), limit=limit)
    estimate.note_caps(scale, capped, scale=True)
    return capped


def limit_settings(settings, limit: int):
    """A method's settings dataclass capped: epochs to 1, image counts to `limit` batches, step counts to MAX_STEPS.

    Only counts change; every field that chooses an architecture or an objective is kept.
    """
    if not dataclasses.is_dataclass(settings):
        return settings
    # a method whose images are large may ask for a smaller dry-run batch (a ClassVar, so never in a spec)
    batch = min(getattr(settings, "batch_size", BATCH), getattr(settings, "dry_run_batch", BATCH))
    changes = {"batch_size": batch} if hasattr(settings, "batch_size") else {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if field.name == "batch_size":
            continue
        if field.name.endswith("epochs"):
            changes[field.name] = min(value, 1)
        elif field.name in _TRAIN_COUNTS:
            changes[field.name] = min(value, limit * batch)
        elif field.name in _EVAL_COUNTS:
            changes[field.name] = min(value, limit * EVAL_BATCH)
        elif field.name.endswith("steps") and value > MAX_STEPS:
            changes[field.name] = MAX_STEPS
    capped = dataclasses.replace(settings, **changes)
    estimate.note_caps(settings, capped)
    return capped
