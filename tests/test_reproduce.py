"""The papermill driver (lib.run.reproduce) on a tiny throwaway notebook in a temporary repository.

A good run replaces the executed notebook, its result CSVs and figures; a failed run leaves them
byte-identical and keeps the failed notebook under papermill_runs/<scale>/failed/.
"""
import nbformat
import pytest

import lib.run.reproduce as reproduce
from lib.run.reproduce import main, parse_value

KERNEL = ["--kernel", "python3"]  # the venv's own ipykernel

BODY = """\
import os
from pathlib import Path

results = Path(os.environ["PURIFY_RESULTS_DIR"])
results.mkdir(parents=True, exist_ok=True)
(results / "values.csv").write_text(f"scale,value\\n{scale},{value}\\n")
figures = Path(os.environ["PURIFY_FIGURES_DIR"])
figures.mkdir(parents=True, exist_ok=True)
(figures / "marker.txt").write_text(str(value))
if value == 13:
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
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# tiny"),
        nbformat.v4.new_code_cell("scale = None\nvalue = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(BODY),
    ]
    nbformat.write(nb, notebooks / "tiny.ipynb")
    (notebooks / ".hidden.ipynb").write_text("{}")  # dot-files are not notebooks to run
    monkeypatch.setattr(reproduce, "REPO", tmp_path)
    monkeypatch.setattr(reproduce, "NOTEBOOKS", notebooks)
    monkeypatch.delenv("PURIFY_RESULTS_DIR", raising=False)
    monkeypatch.delenv("PURIFY_FIGURES_DIR", raising=False)
    return tmp_path


def test_available_notebooks(repo):
    assert reproduce.available_notebooks() == ["tiny"]


def test_success_then_failure_keeps_last_good_outputs(repo, capsys):
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

    assert main(["--scale", "smoke", "--only", "tiny", "-p", "value", "13", *KERNEL]) == 1
    printed = capsys.readouterr().out
    assert "bad value" in printed and "ValueError" in printed and "FAILED" in printed
    assert executed.read_bytes() == good_nb
    assert csv.read_bytes() == good_csv and marker.read_text() == "1"
    assert sorted(p.name for p in csv.parent.iterdir()) == ["values.csv"]
    failed = runs / "failed" / "tiny.ipynb"
    assert failed.exists()
    assert "bad value" in failed.read_text()
    assert not (runs / ".staging" / "tiny").exists()

    # the next good run replaces the outputs and clears the failed copy
    assert main(["--scale", "smoke", "--only", "tiny", "-p", "value", "2", *KERNEL]) == 0
    assert csv.read_text() == "scale,value\nsmoke,2\n" and marker.read_text() == "2"
    assert executed.read_bytes() != good_nb
    assert not failed.exists()


def test_unknown_parameter_fails_without_executing(repo, capsys):
    assert main(["--scale", "smoke", "--only", "tiny", "-p", "nope", "1", *KERNEL]) == 1
    printed = capsys.readouterr().out
    assert "unknown parameter(s) ['nope']" in printed and "value" in printed
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
                                        ("abc", "abc"), ("8/255", "8/255"), ("[1, 2]", [1, 2])])
def test_parse_value(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)
