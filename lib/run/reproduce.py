"""Papermill driver: execute the notebooks at a scale and keep the executed copies and their outputs.

    python -m lib.run.reproduce --scale quick
    python -m lib.run.reproduce --scale smoke --only tour -p seed 1

Each notebook runs into a staging folder; only when it succeeds do the executed notebook
(papermill_runs/<scale>/<name>.ipynb), its result CSVs (papermill_runs/<scale>/results/<name>/) and its
figures (figures/<scale>/<name>/) replace the previous ones. A failed run leaves the last good outputs
untouched and keeps the failed notebook as papermill_runs/<scale>/failed/<name>.ipynb for inspection.
"""
from __future__ import annotations

import argparse
import ast
import os
import shutil
import sys
import time
from pathlib import Path

from lib.core.provenance import REPO
from lib.core.settings import SCALES

NOTEBOOKS = REPO / "notebooks"


def available_notebooks() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb") if not p.name.startswith("."))


def parse_value(text: str):
    """-p values: Python literals (1, 0.5, 'x', None, True) where they parse, else the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _replace_dir(staged: Path, final: Path) -> None:
    """Put a staged folder in place of the final one (the old one is removed only after the move)."""
    if not staged.exists():  # the successful run wrote nothing here: drop outputs of older runs
        shutil.rmtree(final, ignore_errors=True)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staged.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def compact_streams(path: Path) -> None:
    """Merge each cell's consecutive stdout/stderr outputs and keep only what a terminal would show of
    carriage-return redraws, so a progress bar is kept as its last state, not as thousands of updates."""
    import nbformat
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    nb = nbformat.read(path, as_version=4)
    CoalesceStreamsPreprocessor().preprocess(nb, {})
    nbformat.write(nb, path)


def run_notebook(name: str, scale: str, parameters: dict, kernel: str | None = None) -> tuple[bool, float, str]:
    """Execute one notebook; returns (succeeded, seconds, error message)."""
    import papermill as pm

    source = NOTEBOOKS / f"{name}.ipynb"
    known = pm.inspect_notebook(str(source))
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        return False, 0.0, f"unknown parameter(s) {unknown} for {name}; it takes {sorted(known)}"

    runs = REPO / "papermill_runs" / scale
    staging = runs / ".staging" / name
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    staged_nb = staging / f"{name}.ipynb"
    env = {"PURIFY_FIGURES_DIR": str(staging / "figures"), "PURIFY_RESULTS_DIR": str(staging / "results")}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(source), str(staged_nb), parameters={"scale": scale, **parameters},
                            kernel_name=kernel, cwd=str(NOTEBOOKS), progress_bar=False, log_output=False)
        ok, message = True, ""
    except Exception as err:  # PapermillExecutionError carries the notebook's own exception
        ok = False
        message = f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', err)}"
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - start
    if staged_nb.exists():
        compact_streams(staged_nb)

    if ok:
        runs.mkdir(parents=True, exist_ok=True)
        os.replace(staged_nb, runs / f"{name}.ipynb")
        _replace_dir(staging / "results", runs / "results" / name)
        _replace_dir(staging / "figures", REPO / "figures" / scale / name)
        (runs / "failed" / f"{name}.ipynb").unlink(missing_ok=True)
    elif staged_nb.exists():
        (runs / "failed").mkdir(parents=True, exist_ok=True)
        os.replace(staged_nb, runs / "failed" / f"{name}.ipynb")
    shutil.rmtree(staging, ignore_errors=True)
    return ok, seconds, message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.run.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="quick")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="notebooks to run (default: all)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="notebook parameter, e.g. -p seed 1 (repeatable)")
    parser.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    args = parser.parse_args(argv)

    names = available_notebooks()
    selected = args.only or names
    unknown = [n for n in selected if n not in names]
    if unknown:
        parser.error(f"unknown notebook(s) {unknown}; available: {names}")
    parameters = {key: parse_value(value) for key, value in args.parameter}
    if "scale" in parameters:
        parser.error("set the scale with --scale, not -p scale")

    summary = []
    for name in selected:
        print(f"[{args.scale}] {name} ...", flush=True)
        ok, seconds, message = run_notebook(name, args.scale, parameters, args.kernel)
        summary.append((name, "ok" if ok else "FAILED", seconds, message))
        if not ok:
            print(f"  failed: {message}\n  (kept the last good outputs; the failed notebook is in "
                  f"papermill_runs/{args.scale}/failed/{name}.ipynb)", flush=True)

    width = max(len(n) for n, *_ in summary)
    print(f"\n{'notebook':<{width}}  status  seconds")
    for name, status, seconds, _ in summary:
        print(f"{name:<{width}}  {status:<6}  {seconds:7.1f}")
    return 0 if all(s == "ok" for _, s, _, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
