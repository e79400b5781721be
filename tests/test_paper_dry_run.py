"""The `paper` path, proven to run: every notebook at `--scale paper --limit 1` through the papermill driver.

`make test` runs the tour this way (about a minute); `make test-paper` (PURIFY_DRY_RUN_TESTS=1) runs every notebook
(two hours or more on 2 CPU cores: paper-width models on a CPU, even capped; HGD at 299 px more than an hour).

The cap (lib.core.dry_run) keeps every paper architecture (ResNet-18 / VGG-16 targets, DIR's 8 + 2-block ViT
on 2×2 patches, IMPure's ViT-B/16-sized RIAE, the paper widths of every learned defense), each notebook's
attacks, threat models and tables, and shrinks only the counts: one training batch of at most 32 images for one
epoch, one evaluation batch of 16, two attack steps. The data are small files in each real dataset's on-disk format
that this test writes (tests/paper_files.py: CIFAR-10, CIFAR-100, SVHN, an image folder), read with
verify_checksums=False, as a user's re-packed copy would be. Models and results go to tmp_path, shared by the
notebooks of this module (the targets train once). What the dry run cannot show: any number (they mean nothing),
and HGD's own paper run needs ImageNet and five ImageNet-pretrained classifiers at 299 px that cannot be downloaded
here: without them its notebook is checked to stop before any work with the list of what is missing and where it
goes (in `make test`), and with a 1000-class image folder and random stand-in weights in the torchvision and
Hugging Face cache formats it runs its whole paper path (`make test-paper`).
"""
from __future__ import annotations

import nbformat
import pytest

import lib.run.reproduce as reproduce
from paper_files import write_cifar, write_image_folder, write_pretrained_stand_ins, write_svhn  # tests/ on sys.path

LIMIT = "1"
# notebook -> the dataset its paper run uses (the embedded data where the paper's needs what cannot be here)
PAPER_DATASETS = {
    "tour": "cifar10", "threat_models": "cifar10", "transforms": "cifar10", "baselines": "cifar10",
    "dir": "cifar10", "dir_ablations": "cifar10", "dir_adaptive": "svhn", "idfr": "cifar100", "impure": "cifar10",
    "impure_ablations": "cifar10", "rdp": "cifar10", "leaderboard": "cifar10",
}


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    """The data root, the driver's repository root and the caches, shared by every notebook of the module."""
    root = tmp_path_factory.mktemp("paper")
    data = root / "data"
    write_cifar(data, n_train=64, n_test=32)
    write_cifar(data, n_train=128, n_test=32, hundred=True)
    write_svhn(data, n_train=64, n_test=32)
    patch = pytest.MonkeyPatch()
    patch.setattr(reproduce, "REPO", root / "out")
    patch.setenv("PURIFY_CACHE", str(root / "models"))
    patch.setenv("PURIFY_RESULT_CACHE", str(root / "results"))
    for var in ("PURIFY_RESULTS_DIR", "PURIFY_FIGURES_DIR", "PURIFY_DATA_ROOT", "PURIFY_LIMIT", "PURIFY_SCALE"):
        patch.delenv(var, raising=False)
    yield data, root / "out"
    patch.undo()


def test_every_notebook_is_in_the_dry_run():
    assert sorted([*PAPER_DATASETS, "hgd"]) == reproduce.available_notebooks()


def test_hgd_at_paper_scale_stops_first_and_lists_what_it_needs(dry, capsys):
    data, out = dry
    code = reproduce.main(["--scale", "paper", "--limit", LIMIT, "--only", "hgd", "--kernel", "python3"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "needs ImageNet data and pretrained weights" in printed and "inception_v3" in printed


@pytest.mark.paper_dry_run
def test_hgd_runs_at_paper_scale_on_imagenet_files_and_stand_in_weights(dry, tmp_path, monkeypatch, capsys):
    """HGD's own paper path: a 1000-class ImageNet folder read at 299 px and the five ImageNet classifiers, loaded
    from random stand-in weights written where torchvision's hub cache and the Hugging Face hub cache keep them."""
    from lib.defenses.hgd_setup import PAPER_MODELS

    data, out = dry
    imagenet = write_image_folder(tmp_path / "imagenet", classes=1000, per_class=(1, 1), size=64)
    write_pretrained_stand_ins(tmp_path / "torch", tmp_path / "hf", PAPER_MODELS)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = reproduce.main(["--scale", "paper", "--limit", LIMIT, "--only", "hgd", "--kernel", "python3",
                           "-p", "dataset", "imagefolder", "-p", "data_root", str(imagenet)])
    printed = capsys.readouterr().out
    assert code == 0, printed


# in every `make test`: the template notebook (its paper path: ResNet-18 on CIFAR-10 files); the others take
# 2-5 minutes each on 2 cores and run with PURIFY_DRY_RUN_TESTS=1 (`make test-paper`)
ALWAYS = ("tour",)


@pytest.mark.parametrize("name", [n if n in ALWAYS else pytest.param(n, marks=pytest.mark.paper_dry_run)
                                  for n in sorted(PAPER_DATASETS)])
def test_notebook_runs_at_paper_scale_under_the_cap(dry, name, capsys):
    data, out = dry
    dataset = PAPER_DATASETS[name]
    argv = ["--scale", "paper", "--limit", LIMIT, "--only", name, "--kernel", "python3", "-p", "dataset", dataset]
    if dataset != "shapes10":
        argv += ["-p", "data_root", str(data), "-p", "verify_checksums", "False"]
    code = reproduce.main(argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    executed = next((out / "papermill_runs" / f"paper-limit{LIMIT}").rglob(f"{name}.ipynb"))
    nb = nbformat.read(executed, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"scale=paper · DRY RUN capped at {LIMIT} batches" in text
