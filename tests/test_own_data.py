"""Own data from the notebooks: an image folder, or re-packed torchvision files, through the notebook parameters.

The end-to-end test writes a tiny image folder (3 classes of 32 px PNGs: threat_models then leaves out
AutoAttack, whose APGD-T targeted DLR loss needs at least 4) and runs tour and threat_models on it through the papermill
driver at smoke scale, as `python -m lib.run.reproduce --scale smoke --only tour threat_models -p dataset
imagefolder -p data_root <folder> -p image_size 32` does (about 2 minutes on 2 cores, most of it
threat_models' strong attacks). The driver's outputs and
the model cache go to tmp_path ($PURIFY_CACHE, and the driver's REPO pointed there as tests/test_reproduce.py
does), so the test leaves nothing in the repository or the user's cache. The other tests check the data
parameters the same way the driver and `start_run` do, without starting a kernel.
"""
from __future__ import annotations

import json

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import lib.run.reproduce as reproduce
from lib.core import data as D
from lib.run.notebook import start_run
from test_data_formats import CIFAR10_NAMES, _write_cifar  # tests/ is on sys.path (pytest prepends it)

REAL_REPO = reproduce.REPO
CLASSES = ("ant", "bee", "cat", "dog")
THREE = CLASSES[:3]  # the end-to-end folder: fewer classes than AutoAttack needs
SMOKE = dict(scale="smoke", seed=0, device="cpu")  # the other start_run parameters of tour


def write_folder(root, classes=CLASSES, per_split=(("train", 12), ("test", 6)), size=32, seed=0):
    """root/<split>/<class>/<i>.png: random RGB PNGs, the class visible in the mean colour."""
    rng = np.random.default_rng(seed)
    for split, n in per_split:
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                hwc = rng.integers(0, 96, size=(size, size, 3), dtype=np.uint8)
                hwc[..., k % 3] += 150  # learnable, not that it matters at smoke
                Image.fromarray(hwc).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def default_data_options():
    """start_run sets process-wide data options: every test starts and ends with the defaults."""
    D.set_data_options()
    yield
    D.set_data_options()


@pytest.fixture
def out(tmp_path, monkeypatch):
    """The driver's outputs and the model cache under tmp_path; the notebooks are the repository's."""
    monkeypatch.setattr(reproduce, "REPO", tmp_path / "out")
    monkeypatch.setenv("PURIFY_CACHE", str(tmp_path / "cache"))
    for var in ("PURIFY_RESULTS_DIR", "PURIFY_FIGURES_DIR", "PURIFY_DATA_ROOT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "out"


def _outputs_text(path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") + json.dumps(o.get("data", {})) for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))


def test_tour_and_threat_models_run_on_an_image_folder(tmp_path, out, capsys):
    folder = write_folder(tmp_path / "my images", classes=THREE)  # a space in the path: passed through as it is
    parameters = {"dataset": "imagefolder", "data_root": str(folder), "image_size": 32}
    argv = ["--scale", "smoke", "--only", "tour", "threat_models", "--kernel", "python3"]
    argv += [a for key, value in parameters.items() for a in ("-p", key, str(value))]
    assert reproduce.main(argv) == 0, capsys.readouterr().out
    check_folder_runs(out, tmp_path / "cache", folder, parameters)


def check_folder_runs(out, cache, folder, parameters):
    """The two runs were kept apart from the default run, with result rows, figures and the folder's classes."""
    import papermill as pm

    runs = out / "papermill_runs" / "smoke"
    assert not (runs / "tour.ipynb").exists() and not (runs / "results").exists()  # no default run written
    for name, csvs in (("tour", ["accuracy_vs_eps"]),
                       ("threat_models", ["accuracy_vs_eps", "strong_attacks", "sanity_checks"])):
        tag = reproduce.run_tag(name, parameters, pm.inspect_notebook(str(reproduce.NOTEBOOKS / f"{name}.ipynb")))
        assert tag != name and (runs / "runs" / tag / f"{name}.ipynb").exists()
        for csv in csvs:
            frame = pd.read_csv(runs / "runs" / tag / "results" / f"{csv}.csv")
            assert len(frame) and (csv == "sanity_checks" or set(frame.dataset) == {"imagefolder"})
        assert (out / "figures" / "smoke" / "runs" / tag / "accuracy_vs_eps.png").exists()
        for kept in (f"papermill_runs/smoke/runs/{tag}", f"papermill_runs/smoke/failed/{tag}.ipynb",
                     f"papermill_runs/smoke/.staging/{tag}", f"figures/smoke/runs/{tag}"):
            assert not (REAL_REPO / kept).exists(), f"the test wrote {kept} into the repository"
        if name == "tour":
            text = _outputs_text(runs / "runs" / tag / "tour.ipynb")
            assert f"imagefolder: 18 test images of shape (3, 32, 32), classes {THREE}" in text
            assert (out / "figures" / "smoke" / "runs" / tag / "examples_per_class.png").exists()
        else:  # APGD-DLR runs with 3 classes; AutoAttack is left out, and the notebook says so
            strong = pd.read_csv(runs / "runs" / tag / "results" / "strong_attacks.csv")
            assert "apgd_dlr" in set(strong.attack) and "autoattack" not in set(strong.attack)
            assert "left out with 3 classes" in _outputs_text(runs / "runs" / tag / "threat_models.ipynb")

    # the cached classifiers were built for the folder: 3 outputs, the folder's identity in their specs
    checkpoints = sorted(cache.glob("classifier-*.pt"))
    assert len(checkpoints) == 2  # natural (trained by tour, loaded by threat_models) and pgd_at
    for path in checkpoints:
        payload = torch.load(path, weights_only=True)
        spec = json.loads(payload["spec"])
        assert spec["dataset"] == "imagefolder" and spec["data"]["classes"] == list(THREE)
        assert spec["data"]["image_size"] == 32 and spec["data"]["files"] == {"train": 36, "test": 18}
        assert spec["data"]["root"] == str(folder.resolve())
        assert payload["state_dict"]["linear.weight"].shape[0] == len(THREE)


def test_cifar10_format_files_load_with_verify_checksums_false_from_the_notebook_parameters(tmp_path, out):
    """A re-packed CIFAR-10 (the official format, not the official bytes), as tour's parameters pass it."""
    import papermill as pm

    written = _write_cifar(tmp_path, np.random.default_rng(10))
    known = pm.inspect_notebook(str(reproduce.NOTEBOOKS / "tour.ipynb"))
    given = {"dataset": "cifar10", "data_root": str(tmp_path), "verify_checksums": "false"}  # -p ... false
    params = reproduce.check_parameters("tour", given, known)
    assert params["verify_checksums"] is False
    reproduce.check_data_parameters(params, known)
    assert reproduce.run_tag("tour", params, known).startswith("tour__data_root=")

    # the notebook: its parameters cell, start_run, then load_dataset(dataset, split, data_root) as its cells call it
    start_run("tour", dict(SMOKE, dataset="cifar10", data_root=str(tmp_path), image_size=None, verify_checksums=False))
    test = D.load_dataset("cifar10", "test", str(tmp_path))
    assert torch.equal(test.images, torch.from_numpy(written["test"][0])) and test.classes == tuple(CIFAR10_NAMES)
    assert D.load_dataset("cifar10", "train", str(tmp_path)).info.num_classes == 10
    # the default, verify_checksums=True, refuses the same files and says how to accept them
    start_run("tour", dict(SMOKE, dataset="cifar10", data_root=str(tmp_path), image_size=None, verify_checksums=True))
    with pytest.raises(ValueError, match="verify_checksums=False"):
        D.load_dataset("cifar10", "test", str(tmp_path))


def test_start_run_sets_the_data_options_for_the_library_code(tmp_path):
    folder = write_folder(tmp_path / "f", per_split=(("train", 2), ("test", 1)))
    start_run("tour", dict(SMOKE, dataset="imagefolder", data_root=str(folder), image_size=16, verify_checksums=True))
    # what a getter sees without being passed data_root or image_size
    assert D.dataset_info("imagefolder").num_classes == 4 and D.image_shape("imagefolder") == (3, 16)
    assert D.load_dataset("imagefolder", "train").subset(4).images.shape == (4, 3, 16, 16)
    assert D.data_spec("imagefolder")["data"]["image_size"] == 16
    # the folder's own path as dataset is the same data (and the same specs)
    assert D.data_spec(str(folder)) == D.data_spec("imagefolder")
    # the next start_run resets what it is not given
    start_run("tour", dict(SMOKE, dataset="shapes10"))
    assert D.get_data_options() == D.DataOptions()


def test_two_folders_never_share_a_model_spec(tmp_path):
    from lib.core.settings import get_scale
    from lib.models.zoo import classifier_spec

    a = write_folder(tmp_path / "a", per_split=(("train", 2), ("test", 1)))
    b = write_folder(tmp_path / "b", per_split=(("train", 2), ("test", 1)), seed=1)
    smoke = get_scale("smoke")
    specs = {json.dumps(classifier_spec("imagefolder", "natural", smoke, 0, data_root=root), sort_keys=True)
             for root in (a, b)}
    with D.using_data_options(image_size=64):
        specs.add(json.dumps(classifier_spec("imagefolder", "natural", smoke, 0, data_root=a), sort_keys=True))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(a / "train" / "ant" / "extra.png")  # one more image
    specs.add(json.dumps(classifier_spec("imagefolder", "natural", smoke, 0, data_root=a), sort_keys=True))
    assert len(specs) == 4
    # a named dataset's spec holds its name only, whatever the data options say
    with D.using_data_options(image_size=64, root=str(a)):
        assert classifier_spec("shapes10", "natural", smoke, 0)["dataset"] == "shapes10"
        assert "data" not in classifier_spec("shapes10", "natural", smoke, 0)


# --------------------------------------------------------------------------- bad input, before any work


def _no_classes(root):
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()


def _empty_class(root):
    write_folder(root, per_split=(("train", 2), ("test", 1)))
    (root / "test" / "bee" / "0.png").unlink()


def _other_classes(root):
    write_folder(root, per_split=(("train", 2),))
    write_folder(root, classes=("ant", "bee", "cat", "eel"), per_split=(("test", 1),))


def _no_test(root):
    write_folder(root, per_split=(("train", 2),))


BAD_FOLDERS = {  # layout -> (writer, words the message must hold)
    "no class folders": (_no_classes, ["data_root=", "holds no class folders", "<folder>/train/<class name>/"]),
    "a class without images": (_empty_class, ["data_root=", "test/bee holds no images", "add images"]),
    "splits with other classes": (_other_classes, ["data_root=", "only in train: ['dog']", "only in test: ['eel']"]),
    "no test split": (_no_test, ["data_root=", "has no test/ folder"]),
}


@pytest.mark.parametrize("layout", BAD_FOLDERS)
def test_bad_folders_are_rejected_by_the_driver_and_by_start_run(tmp_path, out, capsys, layout):
    writer, words = BAD_FOLDERS[layout]
    writer(tmp_path / "data")
    argv = ["--scale", "smoke", "--only", "tour", "-p", "dataset", "imagefolder", "-p", "data_root",
            str(tmp_path / "data"), "-p", "image_size", "32"]
    assert reproduce.main(argv) == 1
    printed = capsys.readouterr().out
    assert "nothing was run" in printed and all(w in printed for w in words), printed
    assert not out.exists()
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        start_run("tour", dict(SMOKE, dataset="imagefolder", data_root=str(tmp_path / "data"), image_size=32))
    assert all(w in str(info.value) for w in words)


@pytest.mark.parametrize("parameters,words", [
    ({"image_size": "0"}, ["image_size=0 is below 1", "-p image_size 32"]),
    ({"image_size": "-3"}, ["image_size=-3 is below 1"]),
    ({"image_size": "2.5"}, ["image_size must be an int", "got 2.5"]),
    ({"image_size": "big"}, ["image_size must be an int", "got 'big'"]),
    ({"verify_checksums": "maybe"}, ["'verify_checksums' expects a bool", "pass True or False"]),
    ({"dataset": "cifar11"}, ["Unknown dataset: dataset='cifar11' is neither", "shapes10", "imagefolder",
                              "data_root=<folder"]),
    ({"dataset": "cifar10", "image_size": "64"}, ["image_size=64 applies to image folders", "cifar10 images are 32"]),
    ({"dataset": "imagefolder"}, ["data_root=", "is not a folder"]),  # ./data has no image folder
])
def test_bad_data_parameters_are_rejected_before_anything_runs(tmp_path, out, capsys, monkeypatch, parameters,
                                                               words):
    monkeypatch.setenv("PURIFY_DATA_ROOT", str(tmp_path / "nothing here"))
    argv = ["--scale", "smoke", "--only", "tour"] + [a for k, v in parameters.items() for a in ("-p", k, v)]
    assert reproduce.main(argv) == 1
    printed = capsys.readouterr().out
    assert "nothing was run" in printed and all(w in printed for w in words), printed
    assert not out.exists()


@pytest.mark.parametrize("params,error,words", [
    ({"image_size": 0}, ValueError, ["image_size=0 is below 1"]),
    ({"image_size": 32.0}, TypeError, ["image_size must be an int"]),
    ({"verify_checksums": "no"}, TypeError, ["verify_checksums must be True or False"]),
    ({"data_root": 3}, TypeError, ["data_root must be a folder path"]),
    ({"dataset": "nope"}, ValueError, ["dataset='nope' is neither"]),
    ({"dataset": "digits", "image_size": 32}, ValueError, ["digits images are 8×8", "image_size=None"]),
])
def test_start_run_rejects_bad_data_parameters(params, error, words):
    with pytest.raises(error) as info:
        start_run("tour", {**SMOKE, "dataset": "shapes10", **params})
    assert all(w in str(info.value) for w in words)
