"""Quick-scale headline results recomputed with the cached models and compared with the kept CSVs (`make test-quick`).

Each test reruns one cell of a kept quick notebook run through lib, with the notebook's own arguments (scale
`quick` = lib.core.settings.SCALES["quick"], seed 0, shapes10, CPU), and compares it with the row the run kept
under `papermill_runs/quick/results/<notebook>/`:

- tour: clean accuracy and PGD-20 at ε = 8/255 of the natural classifier on the 500 evaluation images;
- transforms: JPEG (quality 25) on the natural classifier, 200 images: PGD-20 oblivious (high) against BPDA
  PGD-20 (collapsed), with the undefended oblivious row as the baseline;
- threat_models: the PGD-AT target under PGD-20 at ε = 8/255 on 250 images;
- hgd: Fig. 5's top-layer E_l of adversarial, random-noise, pixel-denoised (DUNET) and LGD-denoised inputs.

An accuracy must lie inside the kept row's 95% Wilson interval [ci_low, ci_high], and the kept interval must
be the Wilson interval of the kept accuracy and n (so an edited accuracy is caught even if its interval is
not). The same code, seeds and models give the same number, so a mismatch means that the code, a cached
model or the kept CSV changed (a model retrained on another machine can differ in the last bits and move an
accuracy by an image or two: the failure message says whether the recomputed row's own interval still overlaps
the kept one, and which cached models, trained when and at which commit, were used). Models only come from the model cache ($PURIFY_CACHE): a missing one fails
the test, which never trains (fill the cache with `make reproduce` or `python tests/quick_specs.py --train`).

Run with PURIFY_QUICK_TESTS=1 (skipped otherwise, see tests/conftest.py); PURIFY_KEPT_RESULTS points the
tests at another results folder (one subfolder per notebook), e.g. an edited copy.
"""
from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest

# Every lib name these tests use, and the modules to look for it in (first hit wins). lib is being
# reorganised: when a name moves, fix its line here and nothing else. Resolved lazily (on first use inside a
# test), so that collecting this file under `make test` imports nothing from lib.
LIB = {
    "get_scale": ("lib.core.settings",),
    "seed_everything": ("lib.core.settings",),
    "load_dataset": ("lib.core.data",),
    "ModelCache": ("lib.core.cache",),
    "wilson_interval": ("lib.core.results",),
    "get_classifier": ("lib.models.zoo",),
    "clean_row": ("lib.eval.evaluation",),
    "evaluate": ("lib.eval.evaluation",),
    "evaluate_oblivious": ("lib.eval.evaluation",),
    "build_transform": ("lib.defenses.transforms",),
    "default_threat_model": ("lib.eval.sanity",),
    "hgd_settings": ("lib.defenses.hgd", "lib.defenses.hgd_setup"),
    "hgd_classifiers": ("lib.defenses.hgd_setup", "lib.defenses.hgd"),
    "test_sets": ("lib.defenses.hgd_setup", "lib.defenses.hgd"),
    "get_hgd": ("lib.defenses.hgd_setup", "lib.defenses.hgd"),
    "ENSEMBLE": ("lib.attacks.attack_sets", "lib.defenses.hgd_setup", "lib.defenses.hgd"),
    "layerwise_modules": ("lib.models.layers", "lib.eval.analyses", "lib.defenses.hgd"),
    "error_amplification": ("lib.eval.analyses",),
}


class _Lib:
    """lib.<name> for the names of LIB, found in the first of its modules that has it."""

    def __getattr__(self, name: str):
        if name not in LIB:
            raise AttributeError(f"{name!r} is not in LIB at the top of {__file__}")
        tried = []
        for module_name in LIB[name]:
            try:
                module = importlib.import_module(module_name)
            except ImportError as err:
                tried.append(f"{module_name} ({err})")
                continue
            if hasattr(module, name):
                value = getattr(module, name)
                setattr(self, name, value)
                return value
            tried.append(f"{module_name} (has no {name})")
        raise ImportError(f"{name} not found in {', '.join(tried)}: update its line in LIB at the top of {__file__}")


lib = _Lib()

pytestmark = pytest.mark.quick

ROOT = Path(__file__).resolve().parents[1]
KEPT = Path(os.environ.get("PURIFY_KEPT_RESULTS") or ROOT / "papermill_runs" / "quick" / "results")
SCALE, DATASET, SEED, DEVICE = "quick", "shapes10", 0, "cpu"  # the kept runs: default parameters, on CPU


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------

@pytest.fixture
def cached_only():
    """Models come from the cache or the test fails: ModelCache.load_or_train refuses to train."""
    cache_cls = lib.ModelCache
    real = cache_cls.load_or_train
    loaded = []

    def guarded(self, spec, build, train, device="cpu"):
        path = self.path(spec)
        if not path.exists():
            pytest.fail(f"{spec.get('kind')} model {path.name} is not in the model cache {self.root}; these tests "
                        f"never train: fill the cache with `make reproduce` or `python tests/quick_specs.py --train`.")
        model, record = real(self, spec, build, train, device)
        made = record.get("metrics", {}).get("trained_on", {})
        loaded.append(f"{path.name} (trained {made.get('time', '?')}, git {made.get('git', '?')})")
        return model, record

    with mock.patch.object(cache_cls, "load_or_train", guarded):
        yield loaded


def kept_frame(notebook: str, name: str) -> tuple[pd.DataFrame, Path]:
    path = KEPT / notebook / f"{name}.csv"
    if not path.exists():
        pytest.fail(f"kept CSV {path} is missing (PURIFY_KEPT_RESULTS={os.environ.get('PURIFY_KEPT_RESULTS')!r})")
    return pd.read_csv(path), path


def kept_row(notebook: str, name: str, **keys) -> tuple[pd.Series, Path]:
    """The one row of a kept CSV whose columns equal `keys` (floats to 1e-9); fails when not exactly one."""
    frame, path = kept_frame(notebook, name)
    mask = pd.Series(True, index=frame.index)
    for column, value in keys.items():
        if column not in frame:
            pytest.fail(f"{path} has no column {column!r} (columns: {list(frame.columns)})")
        if isinstance(value, float):
            mask &= np.isclose(frame[column].astype(float), value, rtol=0, atol=1e-9)
        else:
            mask &= frame[column] == value
    found = frame[mask]
    if len(found) != 1:
        pytest.fail(f"{path}: expected exactly one row with {keys}, found {len(found)}"
                    + ("" if found.empty else ":\n" + found.to_string()))
    return found.iloc[0], path


def _same(a, b) -> bool:
    if isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
        a, b = float(a), float(b)
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=0, abs_tol=1e-9)
    return a == b


def compare(label: str, kept: pd.Series, path: Path, row: dict) -> tuple[str, list[str]]:
    """(a line saying kept vs recomputed, the problems found): same cell, consistent kept row, inside its interval."""
    acc, low, high, n = float(kept["accuracy"]), float(kept["ci_low"]), float(kept["ci_high"]), int(kept["n"])
    got = float(row["accuracy"])
    match = "exact match" if math.isclose(got, acc, abs_tol=1e-9) else f"differs by {got - acc:+.4f}"
    line = (f"{label}: kept {acc:.4f} [{low:.4f}, {high:.4f}] (n={n}, {path.parent.name}/{path.name}), "
            f"recomputed {got:.4f} (n={row['n']}, {row.get('seconds', float('nan')):.1f} s): {match}")
    problems = []
    for column in ("n", "threat_model", "attack", "steps", "step_size", "eot_samples", "defense_runs"):
        if column in kept.index and column in row and not _same(kept[column], row[column]):
            problems.append(f"{label}: not the kept cell: {column} kept {kept[column]!r}, recomputed {row[column]!r}")
    correct = acc * n
    w_low, w_high = lib.wilson_interval(round(correct), n)
    if not (abs(correct - round(correct)) < 1e-6 and math.isclose(w_low, low, abs_tol=1e-6)
            and math.isclose(w_high, high, abs_tol=1e-6)):
        problems.append(f"{label}: the kept row is inconsistent: accuracy {acc} on n={n} ({correct:g} correct) has the "
                        f"95% Wilson interval [{w_low:.4f}, {w_high:.4f}], the row says [{low:.4f}, {high:.4f}]")
    if not low <= got <= high:
        got_low, got_high = float(row["ci_low"]), float(row["ci_high"])
        overlap = "overlaps" if got_low <= high and low <= got_high else "does not overlap"
        problems.append(f"{label}: recomputed accuracy {got:.4f} is outside the kept row's 95% Wilson interval "
                        f"[{low:.4f}, {high:.4f}] (kept accuracy {acc:.4f}, n={n}; the recomputed row's own interval "
                        f"[{got_low:.4f}, {got_high:.4f}] {overlap} it)")
    return line, problems


def report(lines: list[str], problems: list[str], models: list[str]) -> None:
    lines = lines + ["models (from the cache): " + "; ".join(dict.fromkeys(models))]
    print("\n".join(lines))
    assert not problems, "\n".join(problems + ["", "kept versus recomputed:"] + lines)


def eval_images(scale):
    """The notebooks' evaluation images: S.n_eval of the S.n_test test images (tour, transforms, threat_models)."""
    test_set = lib.load_dataset(DATASET, "test", None).subset(scale.n_test, SEED)
    return test_set.subset(scale.n_eval, SEED).tensors(DEVICE)


def classifier(recipe: str, scale):
    return lib.get_classifier(DATASET, recipe, scale, SEED, device=DEVICE, data_root=None, progress=False)[0]


# ------------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------------

def test_tour_clean_and_pgd20(cached_only):
    """tour.ipynb: the natural classifier's clean accuracy and PGD-20 at 8/255 on the 500 evaluation images."""
    S = lib.get_scale(SCALE)
    lib.seed_everything(SEED)
    x, y = eval_images(S)
    model = classifier("natural", S)
    names = dict(defense="none", classifier="natural", dataset=DATASET, seed=SEED)
    keys = dict(defense="none", classifier="natural")
    clean_kept = kept_row("tour", "accuracy_vs_eps", **keys, threat_model="none", attack="none")
    pgd_kept = kept_row("tour", "accuracy_vs_eps", **keys, threat_model="white-box", attack="pgd", eps=8 / 255)

    clean = lib.clean_row(None, model, x, y, **names)
    pgd = lib.evaluate(None, model, x, y, attack="pgd", threat_model="white-box", eps=8 / 255,
                       steps=S.attack_steps, **names)
    lines, problems = [], []
    for label, kept, row in [("tour clean", clean_kept, clean), ("tour PGD-20 8/255", pgd_kept, pgd)]:
        line, found = compare(label, *kept, row)
        lines.append(line)
        problems += found
    report(lines, problems, cached_only)


def test_transforms_jpeg25_oblivious_versus_bpda(cached_only):
    """transforms.ipynb: JPEG-25 on the natural classifier holds up under oblivious PGD-20, collapses under BPDA."""
    S = lib.get_scale(SCALE)
    lib.seed_everything(SEED)
    eps = 8 / 255
    x_all, y_all = eval_images(S)
    n = max(S.n_eval * 2 // 5, 16)  # the notebook's BUDGET[False]: 200 images, PGD-20, EOT S.eot_samples
    x, y = x_all[:n], y_all[:n]
    model = classifier("natural", S)
    jpeg = lib.build_transform("jpeg", quality=25).reseed(SEED)
    names = dict(classifier="natural", dataset=DATASET, seed=SEED)
    base = dict(classifier="natural", attack="pgd", eps=eps, n=n)
    none_kept = kept_row("transforms", "accuracy_by_threat_model", defense="none", threat_model="oblivious", **base)
    obl_kept = kept_row("transforms", "accuracy_by_threat_model", defense="jpeg25", threat_model="oblivious", **base)
    adaptive = lib.default_threat_model(jpeg)  # the notebook's adaptive threat model: bpda for JPEG
    bpda_kept = kept_row("transforms", "accuracy_by_threat_model", defense="jpeg25", threat_model=adaptive, **base)

    oblivious = lib.evaluate_oblivious({"none": None, "jpeg25": jpeg}, model, x, y, attack="pgd", eps=eps,
                                       steps=S.attack_steps, defense_runs=S.defense_runs, **names)
    bpda = lib.evaluate(jpeg, model, x, y, attack="pgd", threat_model=adaptive, eps=eps, steps=S.attack_steps,
                        eot_samples=S.eot_samples, defense_runs=S.defense_runs, defense="jpeg25", **names)
    rows = {"none": oblivious[0], "jpeg25": oblivious[1], "bpda": bpda}
    lines, problems = [], []
    for label, kept, row in [("transforms none, oblivious PGD-20", none_kept, rows["none"]),
                             ("transforms jpeg25, oblivious PGD-20", obl_kept, rows["jpeg25"]),
                             (f"transforms jpeg25, {adaptive} PGD-20", bpda_kept, rows["bpda"])]:
        line, found = compare(label, *kept, row)
        lines.append(line)
        problems += found
    # the notebook's rules: a transformation helps when it gains > 10 points over no defense under the oblivious
    # attack, and collapses when the adaptive attack takes > 10 points of that away
    for source, none_acc, obl_acc, bpda_acc in [
            ("kept", none_kept[0].accuracy, obl_kept[0].accuracy, bpda_kept[0].accuracy),
            ("recomputed", rows["none"]["accuracy"], rows["jpeg25"]["accuracy"], rows["bpda"]["accuracy"])]:
        lines.append(f"{source}: none {none_acc:.3f}, jpeg25 oblivious {obl_acc:.3f}, {adaptive} {bpda_acc:.3f}")
        if not obl_acc > none_acc + 0.1:
            problems.append(f"{source}: jpeg25 does not gain > 0.1 under the oblivious attack "
                            f"({obl_acc:.3f} vs none {none_acc:.3f})")
        if not bpda_acc < obl_acc - 0.1:
            problems.append(f"{source}: jpeg25 does not collapse under {adaptive} ({bpda_acc:.3f} vs oblivious "
                            f"{obl_acc:.3f})")
    report(lines, problems, cached_only)


def test_threat_models_pgd_at_pgd20(cached_only):
    """threat_models.ipynb: the PGD-AT target under PGD-20 at 8/255 on the sweep's 250 images."""
    S = lib.get_scale(SCALE)
    lib.seed_everything(SEED)
    x, y = eval_images(S)
    n = max(S.n_eval // 2, 16)  # the notebook's n_sweep
    model = classifier("pgd_at", S)
    kept = kept_row("threat_models", "accuracy_vs_eps", defense="none", classifier="pgd_at",
                    threat_model="white-box", attack="pgd", eps=8 / 255, n=n)
    row = lib.evaluate(None, model, x[:n], y[:n], attack="pgd", threat_model="white-box", eps=8 / 255,
                       steps=S.attack_steps, defense="none", classifier="pgd_at", dataset=DATASET, seed=SEED)
    line, problems = compare("threat_models pgd_at PGD-20 8/255", *kept, row)
    report([line], problems, cached_only)


def test_hgd_fig5_top_layer(cached_only):
    """hgd.ipynb, Fig. 5: the order of E_l at the top layer, and each value within a 95% interval of the kept mean.

    The kept CSV holds only the means over H.n_layerwise = 30 images; their spread is not kept. The tolerance is
    1.96 standard errors of that mean (the error bars the notebook draws in Fig. 5), computed from the same 30
    per-image values recomputed here: the scale on which a mean over these 30 images is known, matching the
    95% Wilson intervals of the accuracy checks. The order (read from the kept CSV, not written here) is the
    figure's claim and must be reproduced exactly.
    """
    import torch

    S = lib.get_scale(SCALE)
    H = lib.hgd_settings(S)
    lib.seed_everything(SEED)
    kept, path = kept_frame("hgd", "fig5_layerwise_perturbation")
    kept = kept.set_index("input_kind")

    models = lib.hgd_classifiers(DATASET, S, SEED, device=DEVICE, data_root=None, progress=False)
    target = models["target"][0]
    sets = lib.test_sets(DATASET, S, SEED, models, device=DEVICE, data_root=None, progress=False)

    def denoiser(objective):
        return lib.get_hgd(objective, DATASET, S, SEED, target=target, target_record=models["target"][1],
                           arch="dunet", classes=None, sources=models, device=DEVICE, data_root=None,
                           progress=False)[0]

    dunet, lgd = denoiser("pixel"), denoiser("lgd")
    white16 = sets["white"].at_eps(16 / 255)
    ensemble_attack = white16.attack_names.index("ifgsm4:" + "+".join(lib.ENSEMBLE))
    idx = (white16.attack == ensemble_attack).nonzero(as_tuple=True)[0][:H.n_layerwise]
    x, x_adv, _ = white16.tensors(idx, DEVICE)
    gen = torch.Generator().manual_seed(SEED)
    noise = torch.randn(x.shape, generator=gen).to(DEVICE)
    noise *= ((x_adv - x).abs().flatten(1).sum(1) / noise.abs().flatten(1).sum(1)).view(-1, 1, 1, 1)
    with torch.no_grad():
        inputs = {"adversarial": x_adv, "random noise": (x + noise).clamp(0, 1), "pixel guided (DUNET)": dunet(x_adv),
                  "LGD": lgd(x_adv)}
    layer_names, layer_modules = lib.layerwise_modules(target)
    E = {name: lib.error_amplification(target, x_p, x, layer_modules) for name, x_p in inputs.items()}

    problems = []
    columns = ["input"] + list(layer_names)
    if list(kept.columns) != columns or sorted(kept.index) != sorted(E):
        pytest.fail(f"{path}: kept layers {list(kept.columns)} / inputs {list(kept.index)}, recomputed layers "
                    f"{columns} / inputs {list(E)}")
    top = columns[-1]
    lines = [f"hgd Fig. 5 at '{top}' over {len(x)} images ({path.parent.name}/{path.name}):"]
    for name, e in E.items():
        values = e[:, -1]
        mean, sem = float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))
        kept_value, tol = float(kept.loc[name, top]), 1.96 * sem
        match = "exact match" if math.isclose(mean, kept_value, rel_tol=1e-5) else f"differs by {mean - kept_value:+.4f}"
        lines.append(f"  {name}: kept {kept_value:.4f}, recomputed {mean:.4f} ± {tol:.4f} (1.96 SEM): {match}")
        if not abs(mean - kept_value) <= tol:
            problems.append(f"hgd Fig. 5 {name} at {top}: recomputed E_l {mean:.4f} is not within 1.96 SEM "
                            f"({tol:.4f}) of the kept {kept_value:.4f}")
    kept_order = list(kept[top].sort_values(ascending=False).index)
    order = sorted(E, key=lambda k: -float(E[k][:, -1].mean()))
    lines.append(f"  order at {top}, largest first: kept {' > '.join(kept_order)}; recomputed {' > '.join(order)}")
    if order != kept_order:
        problems.append(f"hgd Fig. 5 at {top}: the recomputed order {' > '.join(order)} is not the kept order "
                        f"{' > '.join(kept_order)}")
    report(lines, problems, cached_only)
