"""Small datasets in the real on-disk formats of the paper-scale runs, written by the tests themselves
(nothing can be downloaded here): CIFAR-10 / CIFAR-100 (cifar-*-python pickles), SVHN (train/test_32x32.mat)
and an ImageFolder (<split>/<class>/<i>.png). The images are random; each class is a colour shift, so a model
can learn something, not that a dry run needs it. Read them with verify_checksums=False (they are not the
official bytes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from test_data_formats import CIFAR10_NAMES, CIFAR100_NAMES, _write_py2_pickle  # tests/ is on sys.path


def _images(rng: np.random.Generator, labels: np.ndarray, size: int = 32) -> np.ndarray:
    """uint8 (N, 3, size, size), the label visible in the mean colour."""
    x = rng.integers(0, 120, size=(len(labels), 3, size, size), dtype=np.uint8)
    for channel in range(3):
        x[:, channel] += (((labels * (channel + 3)) % 7) * 19).astype(np.uint8)[:, None, None]
    return x


def write_cifar(root: Path, n_train: int = 128, n_test: int = 32, hundred: bool = False, seed: int = 0) -> Path:
    """cifar-10-batches-py (five training batches, test_batch, batches.meta) or cifar-100-python under root."""
    rng = np.random.default_rng(seed)
    classes = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "fine_labels" if hundred else "labels"
    if hundred:
        files = {"train": [n_train], "test": [n_test]}
        names = {"train": ["train"], "test": ["test"]}
        _write_py2_pickle(folder / "meta", {"fine_label_names": CIFAR100_NAMES,
                                            "coarse_label_names": [f"coarse_{i}" for i in range(20)]})
    else:
        per = [n_train // 5 + (i < n_train % 5) for i in range(5)]
        files, names = {"train": per, "test": [n_test]}, {"train": [f"data_batch_{i}" for i in range(1, 6)],
                                                         "test": ["test_batch"]}
        _write_py2_pickle(folder / "batches.meta", {"num_cases_per_batch": 10000, "label_names": CIFAR10_NAMES,
                                                    "num_vis": 3072})
    for split in ("train", "test"):
        for name, n in zip(names[split], files[split]):
            y = np.arange(n) % classes  # every class present
            x = _images(rng, y)
            entry = {"batch_label": f"{split} batch", "data": x.reshape(n, 3072),
                     "filenames": [f"img_{i}.png" for i in range(n)], label_key: y.tolist()}
            if hundred:
                entry["coarse_labels"] = (y // 5).tolist()
            _write_py2_pickle(folder / name, entry)
    return root


def write_svhn(root: Path, n_train: int = 128, n_test: int = 32, seed: int = 0) -> Path:
    """<root>/{train,test}_32x32.mat (torchvision's SVHN layout): X (32, 32, 3, N) uint8, y (N, 1), 10 for digit 0."""
    import scipy.io

    rng = np.random.default_rng(seed)
    folder = root
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        digits = np.arange(n) % 10
        x = _images(rng, digits)
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": np.ascontiguousarray(x.transpose(2, 3, 1, 0)),
                                                          "y": np.where(digits == 0, 10, digits)[:, None].astype(np.uint8)})
    return root


def write_image_folder(root: Path, classes: int = 10, per_class: tuple[int, int] = (4, 2), size: int = 32,
                       seed: int = 0) -> Path:
    """<root>/{train,test}/<class>/<i>.png (class folders named like ImageNet's n0…)."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for k in range(classes):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(_images(rng, np.full(n, k), size)):
                Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i}.png")
    return root


def write_pretrained_stand_ins(torch_home: Path, hf_cache: Path, models: dict[str, tuple[str, str]]) -> list[Path]:
    """Randomly initialised weights for `models` (role -> (library, name), lib.defenses.hgd_setup.PAPER_MODELS)
    where their pretrained files would be: torchvision's in <torch_home>/hub/checkpoints/<file of the weights'
    URL>, timm's as a Hugging Face hub snapshot <hf_cache>/models--timm--<name>/snapshots/<commit>/model.safetensors
    with refs/main naming the commit. Loaded with TORCH_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE=1 set, they go
    through the same loading code as the real weights (torchvision checks a file's hash only when it downloads)."""
    import timm
    import torch
    from safetensors.torch import save_file

    from lib.defenses.hgd_setup import _torchvision_weights
    from lib.models.classifiers import _imagenet

    written = []
    for library, name in dict.fromkeys(models.values()):
        if library == "torchvision":
            file = torch_home / "hub" / "checkpoints" / _torchvision_weights(name).url.rsplit("/", 1)[-1]
            if not file.exists():
                file.parent.mkdir(parents=True, exist_ok=True)
                net = _imagenet(name, pretrained=False).net  # the architecture the weights load into (aux head too)
                torch.save(net.state_dict(), file)
        else:
            repo = timm.models.get_pretrained_cfg(name).hf_hub_id
            folder = hf_cache / f"models--{repo.replace('/', '--')}"
            commit = "0" * 40
            file = folder / "snapshots" / commit / "model.safetensors"
            if not file.exists():
                file.parent.mkdir(parents=True, exist_ok=True)
                (folder / "refs").mkdir(exist_ok=True)
                (folder / "refs" / "main").write_text(commit)
                state = timm.create_model(name, pretrained=False).state_dict()
                save_file({k: v.contiguous() for k, v in state.items()}, str(file))
        written.append(file)
    return written
