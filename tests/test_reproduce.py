"""The papermill driver (lib.run.reproduce) on a tiny throwaway notebook in a temporary repository.

A good run replaces the executed notebook, its result CSVs and figures; a failed run leaves them
byte-identical and keeps the failed notebook under papermill_runs/<scale>/failed/. A run with non-default
parameters is kept apart (papermill_runs/<scale>/runs/<tag>/, figures/<scale>/runs/<tag>/) and never
replaces the default run; a `-p` value of the wrong type is rejected before anything runs.
"""
import nbformat
import pytest

import lib.run.reproduce as reproduce
from lib.run.reproduce import main, parse_value
from tiny_notebooks import write_notebook  # tests/ is on sys.path

KERNEL = ["--kernel", "python3"]  # the venv's own ipykernel

BODY = """\
import os
from pathlib import Path

results = Path(os.environ["PURIFY_RESULTS_DIR"])
results.mkdir(parents=True, exist_ok=True)
(results / "values.csv").write_text(f"scale,value\\n{scale},{value}\\n")
figures = Path(os.environ["PURIFY_FIGURES_DIR"])
figures.mkdir(parents=True, exist_ok=True)
(figures / "marker.txt").write_text(str(value) + os.environ.get("TINY_MARK", ""))
if value == 13 or os.environ.get("TINY_FAIL") == "1":
    raise ValueError("bad value")
import sys, time
for i in range(30):  # a progress bar redrawn with carriage returns, flushed as separate outputs
    sys.stderr.write(f"\\rprogress {i:02d}")
    sys.stderr.flush()
    time.sleep(0.01)
sys.stderr.write("\\n")
print("done", value)
"""


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A temporary repository root holding notebooks/tiny.ipynb; lib.run.reproduce points at it."""
    notebooks = tmp_path / "notebooks"
    write_notebook(notebooks / "tiny.ipynb", "scale = None\nvalue = 1\nratio = 0.5", BODY, title="# tiny")
    (notebooks / ".hidden.ipynb").write_text("{}")  # dot-files are not notebooks to run
    monkeypatch.setattr(reproduce, "REPO", tmp_path)
    monkeypatch.setattr(reproduce, "NOTEBOOKS", notebooks)
    monkeypatch.delenv("PURIFY_RESULTS_DIR", raising=False)
    monkeypatch.delenv("PURIFY_FIGURES_DIR", raising=False)
    monkeypatch.delenv("TINY_FAIL", raising=False)
    monkeypatch.delenv("TINY_MARK", raising=False)
    return tmp_path


def test_available_notebooks(repo):
    assert reproduce.available_notebooks() == ["tiny"]


def test_success_then_failure_keeps_last_good_outputs(repo, capsys, monkeypatch):
    import os

    runs = repo / "papermill_runs" / "smoke"
    executed = runs / "tiny.ipynb"
    csv = runs / "results" / "tiny" / "values.csv"
    marker = repo / "figures" / "smoke" / "tiny" / "marker.txt"

    assert main(["--scale", "smoke", "--only", "tiny", *KERNEL]) == 0
    assert executed.exists() and csv.read_text() == "scale,value\nsmoke,1\n" and marker.read_text() == "1"
    out = nbformat.read(executed, as_version=4)
    assert any("done 1" in o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.outputs)
    # the kept notebook holds the progress bar's last state once, not every redraw
    stderr = [o for c in out.cells if c.cell_type == "code" for o in c.outputs if o.get("name") == "stderr"]
    assert "".join(o.text for o in stderr).strip() == "progress 29"
    assert not (runs / "failed").exists() or not any((runs / "failed").iterdir())
    assert not (runs / ".staging" / "tiny").exists()
    assert "PURIFY_RESULTS_DIR" not in os.environ  # the driver restores the environment
    good_nb, good_csv = executed.read_bytes(), csv.read_bytes()
    capsys.readouterr()

    monkeypatch.setenv("TINY_FAIL", "1")  # the default run itself fails this time
    assert main(["--scale", "smoke", "--only", "tiny", *KERNEL]) == 1
    printed = capsys.readouterr().out
    assert "bad value" in printed and "ValueError" in printed and "FAILED" in printed
    assert "papermill_runs/smoke/failed/tiny.ipynb" in printed
    assert executed.read_bytes() == good_nb
    assert csv.read_bytes() == good_csv and marker.read_text() == "1"
    assert sorted(p.name for p in csv.parent.iterdir()) == ["values.csv"]
    failed = runs / "failed" / "tiny.ipynb"
    assert failed.exists()
    assert "bad value" in failed.read_text()
    assert not (runs / ".staging" / "tiny").exists()

    # the next good run replaces the outputs and clears the failed copy
    monkeypatch.delenv("TINY_FAIL")
    monkeypatch.setenv("TINY_MARK", "-again")
    assert main(["--scale", "smoke", "--only", "tiny", *KERNEL]) == 0
    assert csv.read_text() == "scale,value\nsmoke,1\n" and marker.read_text() == "1-again"
    assert executed.read_bytes() != good_nb
    assert not failed.exists()


def test_non_default_parameters_never_replace_the_default_run(repo, capsys):
    runs = repo / "papermill_runs" / "smoke"
    executed, csv = runs / "tiny.ipynb", runs / "results" / "tiny" / "values.csv"
    marker = repo / "figures" / "smoke" / "tiny" / "marker.txt"
    assert main(["--scale", "smoke", "--only", "tiny", *KERNEL]) == 0
    good = executed.read_bytes(), csv.read_bytes(), marker.read_bytes()
    capsys.readouterr()

    # an experiment goes to its own folders, named by the parameters that differ from the defaults
    assert main(["--scale", "smoke", "--only", "tiny", "-p", "value", "2", *KERNEL]) == 0
    assert "papermill_runs/smoke/runs/tiny__value=2/tiny.ipynb" in capsys.readouterr().out
    assert (executed.read_bytes(), csv.read_bytes(), marker.read_bytes()) == good
    experiment = runs / "runs" / "tiny__value=2"
    assert (experiment / "tiny.ipynb").exists()
    assert (experiment / "results" / "values.csv").read_text() == "scale,value\nsmoke,2\n"
    assert (repo / "figures" / "smoke" / "runs" / "tiny__value=2" / "marker.txt").read_text() == "2"

    # a failed experiment keeps its own failed copy, and touches neither the default run nor other experiments
    assert main(["--scale", "smoke", "--only", "tiny", "-p", "value", "13", *KERNEL]) == 1
    assert "papermill_runs/smoke/failed/tiny__value=13.ipynb" in capsys.readouterr().out
    assert (runs / "failed" / "tiny__value=13.ipynb").exists() and not (runs / "failed" / "tiny.ipynb").exists()
    assert not (runs / "runs" / "tiny__value=13").exists()
    assert (executed.read_bytes(), csv.read_bytes(), marker.read_bytes()) == good
    assert (experiment / "results" / "values.csv").read_text() == "scale,value\nsmoke,2\n"

    # a fraction is a float; several parameters make one tag (keys sorted)
    assert main(["--scale", "smoke", "--only", "tiny", "-p", "value", "3", "-p", "ratio", "8/255", *KERNEL]) == 0
    tagged = runs / "runs" / f"tiny__ratio={8 / 255!r}__value=3"
    assert (tagged / "results" / "values.csv").read_text() == "scale,value\nsmoke,3\n"
    ran = nbformat.read(tagged / "tiny.ipynb", as_version=4)
    assert any(f"ratio = {8 / 255!r}" in c.source for c in ran.cells if "injected-parameters" in c.metadata.get("tags", []))

    # a parameter given with its default value is the default run
    assert main(["--scale", "smoke", "--only", "tiny", "-p", "value", "1", "-p", "ratio", "0.5", *KERNEL]) == 0
    assert executed.read_bytes() != good[0] and csv.read_bytes() == good[1]
    assert sorted(p.name for p in (runs / "runs").iterdir()) == [tagged.name, "tiny__value=2"]


@pytest.mark.parametrize("key,text,expected", [
    ("value", "abc", "parameter 'value' expects an int, got 'abc'"),
    ("value", "1.5", "parameter 'value' expects an int, got 1.5"),
    ("value", "True", "parameter 'value' expects an int, got True"),
    ("ratio", "abc", "parameter 'ratio' expects a float, got 'abc'"),
])
def test_wrong_parameter_type_is_rejected_before_running(repo, capsys, key, text, expected):
    assert main(["--scale", "smoke", "--only", "tiny", "-p", key, text, *KERNEL]) == 1
    printed = capsys.readouterr().out
    assert expected in printed and "FAILED" in printed
    assert "nothing was run" in printed and "failed notebook is in" not in printed
    assert not (repo / "papermill_runs").exists() and not (repo / "figures").exists()


def test_check_parameters_coerces_and_names_the_key(repo):
    import papermill as pm

    known = pm.inspect_notebook(str(repo / "notebooks" / "tiny.ipynb"))
    assert reproduce.check_parameters("tiny", {"ratio": 1, "value": 2}, known) == {"ratio": 1.0, "value": 2}
    assert type(reproduce.check_parameters("tiny", {"ratio": 1}, known)["ratio"]) is float
    assert reproduce.check_parameters("tiny", {"ratio": parse_value("8/255")}, known) == {"ratio": 8 / 255}
    assert reproduce.check_parameters("tiny", {"value": None}, known) == {"value": None}
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['nope'\]"):
        reproduce.check_parameters("tiny", {"nope": 1}, known)
    assert reproduce.run_tag("tiny", {"value": 1, "ratio": 0.5}, known) == "tiny"
    assert reproduce.run_tag("tiny", {"value": 2}, known) == "tiny__value=2"
    odd = reproduce.run_tag("tiny", {"scale": "a/b c"}, known)
    assert odd.startswith("tiny__scale=a_b_c-") and "/" not in odd  # sanitised, with a hash against collisions


def test_unknown_parameter_fails_without_executing(repo, capsys):
    assert main(["--scale", "smoke", "--only", "tiny", "-p", "nope", "1", *KERNEL]) == 1
    printed = capsys.readouterr().out
    assert "unknown parameter(s) ['nope']" in printed and "value" in printed
    assert "nothing was run" in printed and "failed notebook is in" not in printed  # none was written
    runs = repo / "papermill_runs" / "smoke"
    assert not (runs / "tiny.ipynb").exists()
    assert not (runs / "failed").exists() and not (runs / "results").exists()
    assert not (repo / "figures").exists()


def test_unknown_notebook_exits(repo, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--scale", "smoke", "--only", "nope"])
    assert info.value.code != 0
    assert "unknown notebook(s) ['nope']" in capsys.readouterr().err
    assert not (repo / "papermill_runs").exists()


def test_scale_parameter_and_unknown_scale_exit(repo):
    with pytest.raises(SystemExit):
        main(["--scale", "smoke", "--only", "tiny", "-p", "scale", "paper"])
    with pytest.raises(SystemExit):
        main(["--scale", "huge", "--only", "tiny"])
    assert not (repo / "papermill_runs").exists()


@pytest.mark.parametrize("text,value", [("1", 1), ("0.5", 0.5), ("'x'", "x"), ("None", None), ("True", True),
                                        ("abc", "abc"), ("8/255", 8 / 255), ("-4/255", -4 / 255),
                                        ("0.5/2", 0.25), ("1/0", "1/0"), ("a/255", "a/255"), ("[1, 2]", [1, 2])])
def test_parse_value(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_budget_flags_count_trained_models_and_compare_with_the_quick_budget(repo, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("PURIFY_CACHE", str(cache))
    assert reproduce.cached_models() == set()
    (cache / "classifier-0123.pt").write_bytes(b"x")
    assert reproduce.cached_models() == {"classifier-0123.pt"}
    # warm: 6 minutes a notebook, 30 for all; cold (a model was trained): 10 and 45
    assert reproduce.over_budget("quick", 5.9 * 60, cold=False) == ""
    assert "6-minute warm" in reproduce.over_budget("quick", 6.1 * 60, cold=False)
    assert reproduce.over_budget("quick", 9 * 60, cold=True) == ""
    assert "10-minute cold" in reproduce.over_budget("quick", 11 * 60, cold=True)
    assert "45-minute cold" in reproduce.over_budget("quick", 46 * 60, cold=True, what="total")
    assert reproduce.over_budget("smoke", 1e6, cold=True) == ""  # no budget at smoke
    assert main(["--scale", "smoke", "--only", "tiny", *KERNEL]) == 0
    summary = capsys.readouterr().out.split("models trained")[1]
    assert "tiny" in summary and "total" in summary and "OVER" not in summary


SLOW_BODY = """\
import os, time
from pathlib import Path

results = Path(os.environ["PURIFY_RESULTS_DIR"])
results.mkdir(parents=True, exist_ok=True)
start = time.time()
time.sleep(4)  # long enough that two jobs started together overlap however slowly their kernels start
(results / "times.csv").write_text(f"start,end,gpu\\n{start},{time.time()},{os.environ.get('CUDA_VISIBLE_DEVICES')}\\n")
"""


def _add_slow_notebooks(notebooks, names=("slow_a", "slow_b")):
    for name in names:
        write_notebook(notebooks / f"{name}.ipynb", "scale = None", SLOW_BODY)
    return names


def _times(repo, name):
    start, end, gpu = (repo / "papermill_runs" / "smoke" / "results" / name / "times.csv").read_text().split("\n")[1].split(",")
    return float(start), float(end), gpu


@pytest.mark.parametrize("how", [["--jobs", "2"], ["--launcher", "local"]], ids=["jobs", "submitit-local"])
def test_concurrent_runs_overlap_and_land_in_the_sequential_layout(repo, capsys, monkeypatch, how):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPUs: the jobs share the CPU
    names = _add_slow_notebooks(repo / "notebooks")
    assert main(["--scale", "smoke", "--only", *names, *KERNEL, *how]) == 0
    for name in names:
        assert (repo / "papermill_runs" / "smoke" / f"{name}.ipynb").exists()
    (a_start, a_end, _), (b_start, b_end, _) = (_times(repo, n) for n in names)
    assert a_start < b_end and b_start < a_end  # the two notebooks ran at the same time
    out = capsys.readouterr().out
    assert "slow_a: wrote" in out and "slow_b: wrote" in out and "FAILED" not in out


def test_jobs_get_one_gpu_each_and_never_more_jobs_than_gpus(repo, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    names = _add_slow_notebooks(repo / "notebooks")
    with pytest.raises(SystemExit):
        main(["--scale", "smoke", "--only", *names, *KERNEL, "--jobs", "3"])
    assert "2 visible GPU(s)" in capsys.readouterr().err
    assert main(["--scale", "smoke", "--only", *names, *KERNEL, "--jobs", "2"]) == 0
    assert sorted(_times(repo, n)[2] for n in names) == ["3", "5"]


def test_a_limited_run_is_a_dry_run_kept_apart_from_real_runs(repo, capsys, monkeypatch):
    """--limit L sets $PURIFY_LIMIT for the notebooks and writes to papermill_runs/<scale>-limit<L>/."""
    monkeypatch.delenv("PURIFY_LIMIT", raising=False)
    assert main(["--scale", "smoke", "--only", "tiny", *KERNEL]) == 0
    real = (repo / "papermill_runs" / "smoke" / "results" / "tiny" / "values.csv").read_bytes()
    monkeypatch.setenv("TINY_MARK", "-capped")
    assert main(["--scale", "smoke", "--only", "tiny", "--limit", "2", *KERNEL]) == 0
    assert "papermill_runs/smoke-limit2/tiny.ipynb" in capsys.readouterr().out
    assert (repo / "figures" / "smoke-limit2" / "tiny" / "marker.txt").read_text() == "1-capped"
    assert (repo / "papermill_runs" / "smoke" / "results" / "tiny" / "values.csv").read_bytes() == real
    assert (repo / "figures" / "smoke" / "tiny" / "marker.txt").read_text() == "1"
