"""The cost estimate before a long run: time a dry run's expensive steps, scale each by what the cap cut.

    python -m lib.run.reproduce --scale paper --estimate [--only dir idfr]

The driver runs each notebook under a dry-run limit (lib.core.dry_run, L = 2 by default) with
$PURIFY_ESTIMATE_LOG naming a file. While it is set, three kinds of step are timed where all of lib runs them:

- **train**: `lib.core.fit.trained` when it trains (the driver gives the run an empty model cache, so every model
  is trained once, by the first notebook that needs it, as in a cold run). `fit`'s steps after the first are
  the per-step cost; it is scaled by the epochs, training images and inner attack steps that the cap cut from
  the model's spec. What a trainer does outside `fit` (crafting stored pairs) is scaled by the images alone.
- **attack**: `lib.attacks.registry.run_attack` and `lib.attacks.pgd.pgd_linf` outside training, scaled by the
  notebook's evaluation images (full n_eval / capped n_eval) and by the attack steps, queries and EOT draws
  the cap cut from that attack.
- **predict**: `lib.eval.evaluation.score` (the defended model's forward passes), scaled by the images and
  the defense runs.

Everything else (kernel start, imports, data loading, tables, figures) is counted once, unscaled. Only the
outermost timed step counts (an attack inside a trainer is training). The cap's originals come from the caps
themselves (`note_caps`, called by lib.core.dry_run and the training recipes): each dict of a model's spec is
traced to the capped settings it was written from. Sub-sets of the evaluation images that a notebook picks
itself (sanity checks on 500 of 10,000) are scaled as if they were all of them, and untimed work is counted
once, so the estimate is a figure to plan with, not a promise; `tests/test_estimate.py` and the closing notes
compare it with measured runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

ESTIMATE_ENV = "PURIFY_ESTIMATE_LOG"
KINDS = ("train", "attack", "predict")

_OBJECTS: list[tuple[dict, dict]] = []  # each capped Scale / settings / recipe: (its fields in full, as capped)
_SCALE: dict[str, tuple[int, int]] = {}  # the capped scale's counts: field -> (full, capped)
_IMAGES: dict[str, tuple[int, int]] = {}  # "notebook": (full, capped) evaluation images its check_n_eval saw
_SUBSET: list[float] = []  # `subset()` blocks: the image ratio of an evaluation on fewer images (AutoAttack's)
_PENDING: dict[str, float] = {}  # ratios noted outside any timed step (an EOT wrapper, an attack being built)


@dataclass
class _Frame:
    kind: str
    start: float
    ratios: dict[str, float] = field(default_factory=dict)
    fits: list[tuple[float, int, float, float]] = field(default_factory=list)  # (seconds, steps, first, attacks)
    parts: list[tuple[float, dict]] = field(default_factory=list)  # sub-steps with their own ratios: (seconds, ratios)
    in_fit: bool = False
    fit_attack: float = 0.0  # time of the inner maximisation (timed attacks) in the running fit
    info: dict = field(default_factory=dict)


_STACK: list[_Frame] = []
_COLLECT: list[dict[str, float]] = []  # `collect()` blocks: ratios noted inside belong to one part of an attack


def recording() -> bool:
    return bool(os.environ.get(ESTIMATE_ENV))


def reset() -> None:
    """Forget every cap and ratio noted (a kernel starts empty; tests that record twice in one process need it)."""
    for noted in (_OBJECTS, _IMAGES, _SCALE, _SUBSET, _PENDING, _STACK, _COLLECT):
        noted.clear()


def note_caps(original, capped, *, scale: bool = False) -> None:
    """Remember, field by field, what a cap changed (a Scale, `scale=True`, or a method's settings dataclass)."""
    if not recording():
        return
    import dataclasses

    full, cut = _plain(dataclasses.asdict(original)), _plain(dataclasses.asdict(capped))
    _OBJECTS.append((full, cut))
    if scale:
        _SCALE.update({k: (v, cut[k]) for k, v in full.items() if _is_count(v) and cut[k] != v})


def note_images(full: int, capped: int) -> None:
    """The notebook's own evaluation size and what the cap left of it (lib.eval.protocols.check_n_eval)."""
    if recording() and capped:
        _IMAGES["notebook"] = (full, capped)


def note_ratio(kind: str, full: int, capped: int, scale_field: str | None = None) -> None:
    """A count the cap cut inside an attack ('steps', 'queries', 'draws'): to the open step, else pending.

    scale_field: a count the capped scale already cut (`attack_steps`, `eot_samples`): an attack run with
    exactly the capped scale's value is taken to have asked for the scale's own.
    """
    if not recording() or not capped:
        return
    if full == capped and scale_field and _SCALE.get(scale_field, (0, None))[1] == capped:
        full = _SCALE[scale_field][0]
    if full <= capped:
        return
    target = _COLLECT[-1] if _COLLECT else _STACK[0].ratios if _STACK else _PENDING
    target[kind] = max(target.get(kind, 1.0), full / capped)


@contextlib.contextmanager
def collect():
    """`with collect() as ratios:` the caps inside note their ratios into `ratios` (one part of a composite
    attack, such as AutoAttack's APGD or Square), not into the attack that contains them."""
    ratios: dict[str, float] = {}
    _COLLECT.append(ratios)
    try:
        yield ratios
    finally:
        _COLLECT.pop()


@contextlib.contextmanager
def part(ratios: dict[str, float] | None):
    """Time one part of the open step with its own ratios (a composite attack's parts cost differently)."""
    if not recording() or not _STACK:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        _STACK[0].parts.append((time.perf_counter() - start, dict(ratios or {})))


def take_pending() -> dict[str, float]:
    """The ratios noted since the last call (build_attack hands them to the attack it built)."""
    taken = dict(_PENDING)
    _PENDING.clear()
    return taken


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def full_value(name: str, capped: int) -> int:
    """What a capped field was before the cap: the largest original that a cap turned into `capped` (the value
    itself when nothing capped it)."""
    return max([full[name] for full, cut in _OBJECTS if cut.get(name) == capped and _is_count(full.get(name))],
               default=capped)


def _eval_images() -> tuple[int, int]:
    """(full, capped) evaluation images: the notebook's own n_eval when it checked one, else the scale's."""
    return _IMAGES.get("notebook", _SCALE.get("n_eval", (1, 1)))


def image_ratio() -> float:
    """Full / capped evaluation images (inside `subset`, that evaluation's own)."""
    if _SUBSET:
        return _SUBSET[-1]
    full, capped = _eval_images()
    return full / capped


@contextlib.contextmanager
def subset(requested: int, used: int):
    """An evaluation on the first `requested` images (AutoAttack on 1000 of 10,000) that the cap cut to `used`:
    inside, steps scale by min(requested, full n_eval) / used rather than by the notebook's whole image ratio."""
    if not recording() or not used:
        yield
        return
    full = _eval_images()[0] if _IMAGES or "n_eval" in _SCALE else used
    _SUBSET.append(min(requested, full) / used)
    try:
        yield
    finally:
        _SUBSET.pop()


def _plain(value):
    """A value as it compares after a JSON round trip (a spec's tuples are lists there)."""
    return json.loads(json.dumps(value, default=str))


def _source(fields: dict) -> dict | None:
    """The full fields of the capped object a spec's dict was written from: the one agreeing with it on the most
    fields (at least two), the latest on a tie; None when none does."""
    best, best_matches = None, 1
    for full, capped in _OBJECTS:
        matches = sum(1 for k, v in fields.items() if k in capped and capped[k] == v)
        if matches >= best_matches:
            best, best_matches = (full, capped), matches
    return best


def training_ratios(spec) -> dict[str, float]:
    """Epochs, training images and inner attack steps that the cap cut from a model's spec (the largest of each).

    Each dict in the spec is traced to the capped object it was written from (`_source`: the scale for a
    classifier's n_train, a method's settings, a training recipe), and its fields' originals come from there.
    """
    ratios = {"epochs": 1.0, "images": 1.0, "steps": 1.0}

    def walk(value):
        if isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        if not isinstance(value, dict):
            return
        value = _plain(value)
        source = _source(value)
        for key, v in value.items():
            walk(v)
            if source is None or not _is_count(v) or v <= 0 or source[1].get(key) != v:
                continue
            full = source[0].get(key)
            if not _is_count(full) or full == v:
                continue
            if key.endswith("epochs"):
                ratios["epochs"] = max(ratios["epochs"], full / v)
            elif key in ("n_train", "source_n_train"):
                ratios["images"] = max(ratios["images"], full / v)
            elif key.endswith("steps"):  # an inner maximisation: steps + 1 passes over a batch
                ratios["steps"] = max(ratios["steps"], (full + 1) / (v + 1))
    walk(spec)
    return ratios


@contextlib.contextmanager
def timed(kind: str, ratios: dict[str, float] | None = None, **info):
    """Time one expensive step (only the outermost counts; see the module docstring). A no-op unless recording."""
    if not recording():
        yield None
        return
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: use one of {KINDS}.")
    frame = _Frame(kind, time.perf_counter(), dict(ratios or {}), info=info)
    outer = _STACK[0] if _STACK else None
    _STACK.append(frame)
    try:
        yield frame
    finally:
        _STACK.pop()
        seconds = time.perf_counter() - frame.start
        if outer is None:
            _write(frame, seconds)
        elif outer.kind == "train" and kind == "attack" and outer.in_fit and len(_STACK) == 1:
            outer.fit_attack += seconds  # the inner maximisation: scales with the inner steps
        elif outer.kind == "train" and kind == "attack" and len(_STACK) == 1:
            outer.parts.append((seconds, {}))  # a trainer crafting its stored pairs: scales with its images


def note_fit(seconds: float, steps: int, first_step: float) -> None:
    """`fit`'s own time, its step count and its first step, for the training step that runs it."""
    if recording() and _STACK and _STACK[0].kind == "train":
        _STACK[0].fits.append((seconds, steps, first_step, _STACK[0].fit_attack))
        _STACK[0].in_fit = False


def fit_started() -> None:
    """`fit` begins: attacks from here to `note_fit` are the training's inner maximisation, part of its steps."""
    if recording() and _STACK and _STACK[0].kind == "train":
        _STACK[0].in_fit, _STACK[0].fit_attack = True, 0.0


def _write(frame: _Frame, seconds: float) -> None:
    if frame.kind == "train":
        r = training_ratios(frame.info.get("spec", {}))
        fit_seconds, estimate = 0.0, 0.0
        for fit_time, steps, first, attacks in frame.fits:  # the first step once, each later one as often as uncapped
            per_step = (fit_time - first) / (steps - 1) if steps > 1 else fit_time
            inner = min(attacks / fit_time, 1.0) if fit_time > 0 else 0.0  # the inner maximisation's share
            full_steps = steps * r["epochs"] * r["images"]
            estimate += first + per_step * (1 - inner + inner * r["steps"]) * max(full_steps - 1, 0)
            fit_seconds += fit_time
        crafted = sum(t for t, _ in frame.parts)  # stored pairs crafted outside fit: as many as training images
        estimate += crafted * r["images"] + (seconds - fit_seconds - crafted)  # the rest: loading, testing, once
        detail = {"ratios": r, "fit_steps": sum(f[1] for f in frame.fits), "fit_seconds": fit_seconds,
                  "inner_attack_seconds": sum(f[3] for f in frame.fits)}
    else:
        r = {"images": image_ratio(), **frame.ratios}
        inside = sum(t for t, _ in frame.parts)
        estimate = (seconds - inside) * _product(frame.ratios)
        estimate = r["images"] * (estimate + sum(t * _product(ratios) for t, ratios in frame.parts))
        detail = {"ratios": r, "parts": frame.parts}
    line = {"kind": frame.kind, "seconds": seconds, "estimate": estimate, **detail,
            **{k: v for k, v in frame.info.items() if k != "spec"}}
    with open(os.environ[ESTIMATE_ENV], "a") as f:
        f.write(json.dumps(line, default=str) + "\n")


def _product(ratios: dict[str, float]) -> float:
    """Iterations ('steps', 'queries': the larger, they are the same loop counted two ways) times 'draws' and
    'runs' (each repeats the whole loop)."""
    loops = max([ratios.get("steps", 1.0), ratios.get("queries", 1.0)])
    return loops * ratios.get("draws", 1.0) * ratios.get("runs", 1.0)


# ----------------------------------------------------------------------------------------------- the driver's side
def summarise(log: str | os.PathLike, wall_seconds: float) -> dict:
    """A notebook's estimate from its log: measured and estimated seconds per kind, the unscaled rest, the total."""
    lines = [json.loads(t) for t in Path(log).read_text().splitlines() if t.strip()] if Path(log).exists() else []
    out = {"dry_run_seconds": wall_seconds, "steps_timed": len(lines)}
    measured = 0.0
    for kind in KINDS:
        mine = [t for t in lines if t["kind"] == kind]
        out[f"{kind}_measured"] = sum(t["seconds"] for t in mine)
        out[f"{kind}_estimate"] = sum(t["estimate"] for t in mine)
        measured += out[f"{kind}_measured"]
    out["other"] = max(wall_seconds - measured, 0.0)
    out["total_estimate"] = out["other"] + sum(out[f"{k}_estimate"] for k in KINDS)
    return out


def format_duration(seconds: float) -> str:
    """3 s, 12 min, 4.2 h, 3.1 days: the unit a person plans with."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
