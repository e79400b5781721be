"""Papermill driver: execute the notebooks at a scale and keep the executed copies and their outputs.

    python -m lib.run.reproduce --scale quick
    python -m lib.run.reproduce --scale smoke --only tour -p seed 1
    python -m lib.run.reproduce --scale paper --jobs 4                       # 4 notebooks at once, one GPU each
    python -m lib.run.reproduce --scale paper --launcher slurm --partition gpu --gpus-per-job 1 --time-limit 2880

Each notebook runs into a staging folder; only when it succeeds do the executed notebook
(papermill_runs/<scale>/<name>.ipynb), its result CSVs (papermill_runs/<scale>/results/<name>/) and its
figures (figures/<scale>/<name>/) replace the previous ones. A failed run leaves the last good outputs
untouched and keeps the failed notebook as papermill_runs/<scale>/failed/<name>.ipynb for inspection.

A run whose `-p` parameters differ from the notebook's defaults is an experiment, kept apart so that it never
replaces the default run: its tag is `<name>__<key>=<value>[__...]` (keys sorted; e.g. `tour__dataset=digits`),
and it goes to papermill_runs/<scale>/runs/<tag>/<name>.ipynb, papermill_runs/<scale>/runs/<tag>/results/ and
figures/<scale>/runs/<tag>/ (failed: papermill_runs/<scale>/failed/<tag>.ipynb). A parameter given with its
default value (`-p seed 0`) is the default run.

`-p` values are Python literals (1, 0.5, 'x', None, True), `k/255`-style fractions (floats), or else plain
strings. Each is checked against the notebook's default before anything runs: an unknown key, or a value of
the wrong type ("parameter 'seed' expects an int, got 'abc'"), rejects the notebook without executing it
(an int is accepted where a float is expected, `true`/`false` where a bool is; a default of None accepts
anything). The data parameters are checked too (`check_data_parameters`: an unknown dataset, an image folder
without train/<class>/ and test/<class>/ images, an image_size that is not a positive int), so
`-p dataset imagefolder -p data_root /my/images -p image_size 32` fails before a kernel starts if the folder
is not usable.

At `quick` the driver checks the budget of ../shared/DESIGN.md on 2 CPU cores: 6 minutes a notebook warm
(every model it needs already in the cache) and 10 cold, 30 minutes for all warm and 45 cold. A notebook is
counted cold when it trained (saved) a model into the cache ($PURIFY_CACHE); the summary prints each notebook's
time, how many models it trained, and flags every notebook (and the total) over its budget.

`--limit L` is a dry run (lib.core.dry_run): every code path of the scale with L batches of data, one epoch and
few attack steps, into papermill_runs/<scale>-limit<L>/ and its own model cache; `--scale paper --limit 2` proves
the paper path runs without the hours it takes.

`--estimate` prints the expected wall time of each notebook at the scale, and in total, before anyone starts it:
each runs as a dry run (`--limit 2` unless `--limit` says otherwise) with an empty model and result cache, its
training, attacks and forward passes timed and scaled by what the cap cut (lib.core.estimate); the figures go
to papermill_runs/<scale>-limit<L>/estimate/ (estimate.json, and each timed step in <notebook>.jsonl).

`--jobs N` and `--launcher slurm|local` run notebooks concurrently (lib.run.launch); the outputs land in the
same layout, and the summary's total is the sum of the notebooks' times, not the wall time.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

from lib.core.cache import default_root as default_cache_root
from lib.core.dry_run import LIMIT_ENV
from lib.core.provenance import REPO
from lib.core.settings import SCALES, get_scale

NOTEBOOKS = REPO / "notebooks"


ESTIMATE_LIMIT = 2  # --estimate's dry run: two batches, so a step after the first (warm-up) is timed

# scale -> (warm, cold) budgets in seconds, per notebook and for a whole run
BUDGETS = {"quick": {"notebook": (6 * 60, 10 * 60), "total": (30 * 60, 45 * 60)}}


def cached_models() -> set[str]:
    """File names of the models in the cache folder (to count what a notebook trained)."""
    root = default_cache_root()
    return {p.name for p in root.glob("*.pt")} if root.is_dir() else set()


def over_budget(scale: str, seconds: float, cold: bool, what: str = "notebook") -> str:
    """'' if within the scale's budget (or the scale has none), else a short flag naming the budget."""
    if scale not in BUDGETS:
        return ""
    limit = BUDGETS[scale][what][1 if cold else 0]
    return f"OVER the {limit / 60:.0f}-minute {'cold' if cold else 'warm'} budget" if seconds > limit else ""


def available_notebooks() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb") if not p.name.startswith("."))


_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")
_NO_DEFAULT = object()  # a default the driver cannot read (an expression other than k/255): any value goes


def parse_value(text: str):
    """-p values: `k/255`-style fractions as floats, Python literals (1, 0.5, 'x', None, True) where they parse,
    else the plain string."""
    fraction = _FRACTION.match(text)
    if fraction and float(fraction[2]) != 0:
        return float(fraction[1]) / float(fraction[2])
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _default_value(source: str):
    """A notebook default from its parameters-cell source ('0', '"shapes10"', '8 / 255', 'None')."""
    value = parse_value(source)
    return _NO_DEFAULT if value == source and not (source.startswith(("'", '"'))) else value


def _type_name(value) -> str:
    name = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value), type(value).__name__)
    return ("an " if name[0] in "aeiou" else "a ") + name


def check_parameters(name: str, parameters: dict, known: dict) -> dict:
    """`-p` parameters checked against a notebook's defaults (papermill.inspect_notebook's `known`).

    Returns them coerced (an int where a float is expected becomes a float); raises ValueError for an
    unknown key and TypeError for a value of the wrong type, naming the parameter.
    """
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {name}; it takes {sorted(known)}")
    checked = {}
    for key, value in parameters.items():
        default = _default_value(known[key].get("default", ""))
        if default is _NO_DEFAULT or default is None or value is None:
            checked[key] = value
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            checked[key] = float(value)
        elif isinstance(default, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
            checked[key] = value.lower() == "true"  # -p verify_checksums false: the shell spelling
        elif type(value) is type(default) or (isinstance(value, (list, tuple)) and isinstance(default, (list, tuple))):
            checked[key] = value
        else:
            hint = " (a fraction such as 8/255 is accepted)" if isinstance(default, float) else ""
            hint = " (pass True or False)" if isinstance(default, bool) else hint
            hint = " (quote it: -p {0} \"'{1}'\")".format(key, value) if isinstance(default, str) else hint
            raise TypeError(f"parameter {key!r} expects {_type_name(default)}, got {value!r}{hint}; {name}'s "
                            f"default is {default!r}")
    return checked


DATA_PARAMETERS = ("dataset", "data_root", "image_size", "verify_checksums")


def check_data_parameters(parameters: dict, known: dict) -> None:
    """The data parameters the notebook will run with, checked as its start_run will check them (unknown
    dataset, bad image folder, bad image_size or verify_checksums), so a bad one runs nothing. Relative paths
    are taken from notebooks/, the notebook's working directory."""
    from lib.core.data import DATASETS, DataOptions, check_dataset

    values = {k: _default_value(known[k].get("default", "")) for k in DATA_PARAMETERS if k in known}
    values.update({k: v for k, v in parameters.items() if k in values})
    if any(v is _NO_DEFAULT for v in values.values()):
        return  # a default the driver cannot read: start_run checks it

    def from_notebooks(path) -> Path | None:
        return None if path is None else NOTEBOOKS / Path(path).expanduser()  # an absolute path stays itself

    DataOptions(values.get("data_root"), values.get("image_size"), values.get("verify_checksums", True))  # types
    root = from_notebooks(values.get("data_root"))
    dataset = values.get("dataset")
    if dataset is not None:
        folder = from_notebooks(dataset) if dataset not in DATASETS else None
        check_dataset(folder if folder is not None and folder.is_dir() else dataset, root,
                      image_size=values.get("image_size"))


def run_tag(name: str, parameters: dict, known: dict) -> str:
    """The run's name: the notebook's for its defaults, else `<name>__key=value[__...]` (the non-default ones)."""
    changed = {}
    for key in sorted(parameters):
        default = _default_value(known.get(key, {}).get("default", ""))
        value = parameters[key]
        if default is _NO_DEFAULT or type(value) is not type(default) or value != default:
            changed[key] = value
    if not changed:
        return name
    text = "__".join(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in changed.items())
    slug = re.sub(r"[^A-Za-z0-9._=+-]", "_", text)
    if slug != text or len(slug) > 80:  # sanitised or shortened: a hash keeps different values apart
        slug = slug[:80] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{name}__{slug}"


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """os.environ with `values` set inside the block and every key as it was afterwards (an unset one unset
    again), so that main() called from Python leaves its caller's environment alone."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class NotebookRun(NamedTuple):
    ok: bool
    seconds: float
    message: str
    failed_notebook: Path | None  # the failed executed notebook this run kept (None: none was written)
    notebook: Path | None  # where the executed notebook went (None unless ok)


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


def run_notebook(name: str, scale: str, parameters: dict, kernel: str | None = None) -> NotebookRun:
    """Execute one notebook; returns (ok, seconds, message, failed_notebook, notebook).

    Parameters are checked first (`check_parameters`); a rejected one runs nothing and writes nothing.
    """
    import papermill as pm

    source = NOTEBOOKS / f"{name}.ipynb"
    known = pm.inspect_notebook(str(source))
    try:
        parameters = check_parameters(name, parameters, known)
        check_data_parameters(parameters, known)
    except (TypeError, ValueError, FileNotFoundError) as err:
        return NotebookRun(False, 0.0, str(err), None, None)

    folder = get_scale(scale).folder  # `<scale>-limit<L>` for a dry run, never mixed with real runs
    runs = REPO / "papermill_runs" / folder
    tag = run_tag(name, parameters, known)
    if tag == name:  # the default run
        final_nb, final_results, final_figures = runs / f"{name}.ipynb", runs / "results" / name, REPO / "figures" / folder / name
    else:  # an experiment: kept apart, never replacing the default run
        final_nb = runs / "runs" / tag / f"{name}.ipynb"
        final_results, final_figures = runs / "runs" / tag / "results", REPO / "figures" / folder / "runs" / tag
    failed_nb = runs / "failed" / f"{tag}.ipynb"
    staging = runs / ".staging" / tag
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    staged_nb = staging / f"{name}.ipynb"
    # text progress bars: a kept notebook holds each bar's last line, not ipywidgets state
    env = {"PURIFY_FIGURES_DIR": str(staging / "figures"), "PURIFY_RESULTS_DIR": str(staging / "results"),
           "PURIFY_TEXT_PROGRESS": "1"}
    start = time.perf_counter()
    try:
        with environment(env):
            pm.execute_notebook(str(source), str(staged_nb), parameters={"scale": scale, **parameters},
                                kernel_name=kernel, cwd=str(NOTEBOOKS), progress_bar=False, log_output=False)
        ok, message = True, ""
    except Exception as err:  # PapermillExecutionError carries the notebook's own exception
        ok = False
        message = f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', err)}"
    seconds = time.perf_counter() - start
    if staged_nb.exists():
        compact_streams(staged_nb)

    kept_failed = None
    if ok:
        final_nb.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged_nb, final_nb)
        _replace_dir(staging / "results", final_results)
        _replace_dir(staging / "figures", final_figures)
        failed_nb.unlink(missing_ok=True)
    elif staged_nb.exists():
        failed_nb.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged_nb, failed_nb)
        kept_failed = failed_nb
    shutil.rmtree(staging, ignore_errors=True)
    return NotebookRun(ok, seconds, message, kept_failed, final_nb if ok else None)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.run.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="quick")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="notebooks to run (default: all)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="notebook parameter, e.g. -p seed 1 (repeatable)")
    parser.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    parser.add_argument("--limit", type=int, default=None, metavar="L",
                        help="dry run: every code path of the scale, capped at L batches, one epoch and few attack "
                             "steps (lib.core.dry_run); outputs go to papermill_runs/<scale>-limit<L>/")
    parser.add_argument("--estimate", action="store_true",
                        help="print the expected wall time of each notebook at this scale, from a timed dry run "
                             "(--limit 2 unless given; lib.core.estimate), instead of running it")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="notebooks run at once, each in its own process and on its own GPU when GPUs are visible")
    parser.add_argument("--launcher", choices=("slurm", "local"), default=None,
                        help="one submitit job per notebook: on Slurm, or submitit's local executor")
    parser.add_argument("--partition", default=None, help="Slurm partition (--launcher slurm)")
    parser.add_argument("--time-limit", type=int, default=240, metavar="MINUTES", help="per job (--launcher)")
    parser.add_argument("--gpus-per-job", type=int, default=0, metavar="N", help="GPUs per job (--launcher)")
    parser.add_argument("--cpus-per-job", type=int, default=None, metavar="N", help="CPUs per job (--launcher)")
    parser.add_argument("--submitit-folder", default=None,
                        help="submitit's logs (default papermill_runs/<scale>/submitit)")
    args = parser.parse_args(argv)

    names = available_notebooks()
    selected = args.only or names
    unknown = [n for n in selected if n not in names]
    if unknown:
        parser.error(f"unknown notebook(s) {unknown}; available: {names}")
    parameters = {key: parse_value(value) for key, value in args.parameter}
    if "scale" in parameters:
        parser.error("set the scale with --scale, not -p scale")
    if args.estimate:
        if args.jobs > 1 or args.launcher:
            parser.error("--estimate times one notebook at a time on this machine; leave out --jobs and --launcher")
        args.limit = args.limit or ESTIMATE_LIMIT
    if args.limit is not None:
        if args.limit < 1:
            parser.error(f"--limit {args.limit}: the cap is a number of batches, an int ≥ 1 (for example --limit 2)")
        with environment({LIMIT_ENV: str(args.limit)}):  # the kernels (and submitit jobs) inherit it
            return _execute(args, selected, parameters, parser)
    return _execute(args, selected, parameters, parser)


def _execute(args, selected: list[str], parameters: dict, parser: argparse.ArgumentParser) -> int:
    """Run the selected notebooks (sequentially, in parallel or as submitit jobs) and print the summary."""

    from lib.run.launch import notebook_job, run_parallel, run_submitit

    if args.estimate:
        return _estimate(args, selected, parameters)

    def report(result) -> None:
        if result.ok:
            print(f"  {result.name}: wrote {_shown(Path(result.notebook))}", flush=True)
        elif result.failed_notebook is not None:
            print(f"  {result.name} failed: {result.message}\n  (kept the last good outputs; the failed notebook is "
                  f"in {_shown(Path(result.failed_notebook))})", flush=True)
        else:
            print(f"  {result.name} failed: {result.message}\n  (nothing was run and nothing was written)", flush=True)

    if args.launcher or args.jobs > 1:
        how = (f"as {args.launcher} submitit jobs" if args.launcher else f"{args.jobs} at a time")
        print(f"[{args.scale}] {', '.join(selected)}: {how} ...", flush=True)
        try:
            if args.launcher:
                folder = args.submitit_folder or REPO / "papermill_runs" / args.scale / "submitit"
                results = run_submitit(selected, args.scale, parameters, args.kernel, cluster=args.launcher,
                                       folder=folder, partition=args.partition, timeout_min=args.time_limit,
                                       gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job)
            else:
                results = run_parallel(selected, args.scale, parameters, args.kernel, args.jobs)
        except ValueError as err:
            parser.error(str(err))
        for result in results:
            report(result)
    else:
        results = []
        for name in selected:
            print(f"[{args.scale}] {name} ...", flush=True)
            results.append(notebook_job(name, args.scale, parameters, args.kernel, str(REPO), str(NOTEBOOKS)))
            report(results[-1])
    summary = [(r.name, "ok" if r.ok else "FAILED", r.seconds, r.trained) for r in results]

    width = max(len(n) for n, *_ in summary + [("total",)])
    print(f"\n{'notebook':<{width}}  status  minutes  models trained")
    for name, status, seconds, trained in summary:
        flag = over_budget(args.scale, seconds, trained > 0)
        print(f"{name:<{width}}  {status:<6}  {seconds / 60:7.1f}  {trained:14d}  {flag}")
    total, trained_total = sum(s for _, _, s, _ in summary), sum(t for *_, t in summary)
    flag = over_budget(args.scale, total, trained_total > 0, "total") if not args.only else ""
    print(f"{'total':<{width}}  {'':<6}  {total / 60:7.1f}  {trained_total:14d}  {flag}")
    return 0 if all(s == "ok" for _, s, _, _ in summary) else 1


def _estimate(args, selected: list[str], parameters: dict) -> int:
    """--estimate: each notebook as a timed dry run on empty caches; prints and saves the expected times."""
    import json
    import tempfile

    from lib.core import estimate
    from lib.core.results import write_text_atomic
    from lib.run.launch import notebook_job

    full = SCALES[args.scale]
    print(f"[{args.scale} --estimate] timing a dry run of each notebook (limit {args.limit}) with empty model and "
          f"result caches: every model is trained once, by the first notebook that needs it, as in a cold run",
          flush=True)
    rows, failed = {}, []
    out = REPO / "papermill_runs" / get_scale(args.scale).folder / "estimate"  # the summary and each step's timing
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="purify-estimate-") as tmp, \
            environment({"PURIFY_CACHE": f"{tmp}/models", "PURIFY_RESULT_CACHE": f"{tmp}/results"}):
        for name in selected:
            log = out / f"{name}.jsonl"
            log.unlink(missing_ok=True)
            print(f"  {name} ...", flush=True)
            with environment({estimate.ESTIMATE_ENV: str(log)}):
                result = notebook_job(name, args.scale, parameters, args.kernel, str(REPO), str(NOTEBOOKS))
            if not result.ok:
                failed.append(name)
                print(f"  {name}: the dry run failed ({result.message}); no estimate", flush=True)
                continue
            rows[name] = estimate.summarise(log, result.seconds)
    if rows:
        width = max(len(n) for n in [*rows, "total"])
        print(f"\nexpected wall time at {args.scale} on this machine ({full.n_eval} evaluation images, {full.epochs} "
              f"epochs by default; lib.core.estimate says what it scales and where it errs)")
        print(f"{'notebook':<{width}}  {'dry run':>8}  {'training':>9}  {'attacks':>9}  {'predict':>9}  {'rest':>7}  "
              f"{'total':>9}")
        for name, r in rows.items():
            print(f"{name:<{width}}  {estimate.format_duration(r['dry_run_seconds']):>8}  "
                  + "  ".join(f"{estimate.format_duration(r[f'{k}_estimate']):>9}" for k in estimate.KINDS)
                  + f"  {estimate.format_duration(r['other']):>7}  {estimate.format_duration(r['total_estimate']):>9}")
        total = sum(r["total_estimate"] for r in rows.values())
        print(f"{'total':<{width}}  {'':>8}  {'':>9}  {'':>9}  {'':>9}  {'':>7}  {estimate.format_duration(total):>9}")
        summary = {"scale": args.scale, "limit": args.limit, "parameters": parameters, "notebooks": rows,
                   "total_estimate": total, "failed": failed}
        write_text_atomic(json.dumps(summary, indent=1), out / "estimate.json")
        print(f"(saved to {_shown(out / 'estimate.json')}; each timed step in {_shown(out)}/<notebook>.jsonl)")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
