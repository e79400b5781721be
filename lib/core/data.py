"""Datasets behind one function, `load_dataset(name, split, root, download)`.

Small datasets are held in memory as uint8 NCHW tensors and batched without per-image Python work
(airbench style): the embedded `shapes10`, scikit-learn's `digits`, and torchvision's CIFAR-10,
CIFAR-100, SVHN and MNIST, read from their official on-disk formats by torchvision's own classes.
ImageNet-style folders stay on disk and go through torchvision's ImageFolder and a DataLoader.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from lib.core.provenance import REPO
from lib.core import shapes

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]  # per-channel statistics used by the classifier's normalisation layer
    std: tuple[float, ...]


INFO: dict[str, DatasetInfo] = {
    "shapes10": DatasetInfo(3, 32, 10, (0.50, 0.50, 0.50), (0.26, 0.26, 0.26)),
    "digits": DatasetInfo(1, 8, 10, (0.30,), (0.38,)),
    "cifar10": DatasetInfo(3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": DatasetInfo(3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": DatasetInfo(1, 28, 10, (0.1307,), (0.3081,)),
    "imagefolder": DatasetInfo(3, 224, 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
DATASETS = tuple(INFO)
SHAPES10_SIZES = {"train": 20_000, "test": 2_000}


@dataclass(frozen=True)
class ImageData:
    """An in-memory image dataset: uint8 images (N, C, H, W), int64 labels (N,)."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i):
        return self.images[i].float() / 255, self.labels[i]

    @property
    def info(self) -> DatasetInfo:
        return dataset_info(self.name)

    def subset(self, n: int | None, seed: int = 0) -> "ImageData":
        """The first n images of a seeded permutation (all of them when n is None or larger)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return replace(self, images=self.images[idx], labels=self.labels[idx])

    def tensors(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """All images as floats in [0, 1] and the labels, on a device."""
        return self.images.to(device).float().div_(255), self.labels.to(device)


def dataset_info(name: str) -> DatasetInfo:
    if name not in INFO:
        raise ValueError(f"Unknown dataset {name!r}: choose one of {list(DATASETS)}.")
    return INFO[name]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: choose 'train' or 'test'.")


@functools.lru_cache(maxsize=8)
def _shapes10(split: str, seed: int) -> ImageData:
    images, labels = shapes.generate_shapes10(SHAPES10_SIZES[split], seed=2 * seed + (split == "test"))
    return ImageData("shapes10", split, images, labels, shapes.CLASSES)


def _digits(split: str) -> ImageData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * 255 / 16).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    # fixed stratified-enough split: every fifth image is a test image
    test = torch.arange(len(labels)) % 5 == 0
    keep = test if split == "test" else ~test
    return ImageData("digits", split, images[keep], labels[keep], tuple(str(i) for i in range(10)))


def _missing(name: str, root: Path, err: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"Dataset {name!r} was not found under data_root={str(root)!r} ({err}). Either put the official files "
        f"there (torchvision's layout, e.g. {root}/cifar-10-batches-py/ for CIFAR-10) or pass download=True "
        "on a machine with internet access."
    )


def _expected_files(cls, root: Path, split: str) -> list[Path]:
    """The files torchvision's CIFAR (every batch and the meta file) or SVHN (the split's .mat) class reads."""
    if hasattr(cls, "train_list"):  # CIFAR
        base = root / cls.base_folder
        return [base / entry[0] for entry in cls.train_list + cls.test_list] + [base / cls.meta["filename"]]
    return [root / cls.split_list[split][1]]  # SVHN


def _unverified(cls):
    """A torchvision dataset class that checks files exist but not their MD5 sums.

    The parsing code is torchvision's own; only the checksum comparison is skipped. Used for files that
    are in the official format but are not the official bytes (the format-faithful test files, or a
    user's re-packed copy) when the caller passes verify_checksums=False.
    """
    def exists_only(self) -> bool:
        return all(path.is_file() for path in _expected_files(cls, Path(self.root), getattr(self, "split", "")))

    attrs = {"_check_integrity": exists_only}
    if hasattr(cls, "meta"):  # CIFAR's _load_meta checks the meta file's MD5 itself; md5=None: exists only
        attrs["meta"] = {**cls.meta, "md5": None}
    return type(cls.__name__ + "Unverified", (cls,), attrs)


def _torchvision(name: str, split: str, root: Path, download: bool, verify_checksums: bool) -> ImageData:
    from torchvision import datasets as tvd

    train = split == "train"
    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "svhn": tvd.SVHN, "mnist": tvd.MNIST}[name]
    if not verify_checksums and name != "mnist":  # MNIST only checks that files exist
        cls = _unverified(cls)
    try:
        if name == "svhn":
            ds = cls(str(root), split=split, download=download)
        else:
            ds = cls(str(root), train=train, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted."
        if verify_checksums and name != "mnist" and all(path.is_file() for path in _expected_files(cls, root, split)):
            raise ValueError(
                f"The {name} files under {root} exist but do not match the official MD5 checksums (corrupt or "
                "re-packed). Re-download them, or pass verify_checksums=False if you trust these files."
            ) from err
        raise _missing(name, root, err) from err

    if name == "svhn":
        images, labels = torch.from_numpy(ds.data), torch.from_numpy(ds.labels.astype(np.int64))
        classes = tuple(str(i) for i in range(10))
    elif name == "mnist":
        images, labels = ds.data.unsqueeze(1), ds.targets.long()
        classes = tuple(ds.classes)
    else:  # CIFAR stores HWC
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor(ds.targets, dtype=torch.int64)
        classes = tuple(ds.classes)
    return ImageData(name, split, images, labels, classes)


@dataclass(frozen=True)
class FolderData:
    """An ImageNet-style folder (root/<split>/<class>/<image>), read lazily at a fixed resolution."""

    name: str
    split: str
    dataset: torch.utils.data.Dataset
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def info(self) -> DatasetInfo:
        return dataset_info("imagefolder")


def _imagefolder(split: str, root: Path, image_size: int) -> FolderData:
    from torchvision import datasets as tvd, transforms as T

    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"No image folder at {folder}: ImageNet-style data must be laid out as "
            f"{root}/{split}/<class name>/<image>.JPEG (torchvision ImageFolder)."
        )
    resize = int(round(image_size / 0.875))  # the usual resize-then-centre-crop ratio
    transform = T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor()])
    ds = tvd.ImageFolder(str(folder), transform=transform)
    return FolderData("imagefolder", split, ds, tuple(ds.classes))


def default_root() -> Path:
    return Path(os.environ.get("PURIFY_DATA_ROOT", REPO / "data"))


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None,
                 download: bool = False, *, seed: int = 0, verify_checksums: bool = True,
                 image_size: int = 224) -> ImageData | FolderData:
    """Load a dataset split by name.

    name: one of DATASETS. root: where the real datasets live (default $PURIFY_DATA_ROOT or ./data).
    download: let torchvision fetch missing files. seed: the embedded dataset's generation seed.
    verify_checksums: compare torchvision datasets with the official MD5 sums (see `_unverified`).
    image_size: resolution for `imagefolder` (299 for Inception-v3, 224 otherwise).
    """
    dataset_info(name)
    _check_split(split)
    root = (Path(root) if root is not None else default_root()).expanduser()
    if name == "shapes10":
        return _shapes10(split, seed)
    if name == "digits":
        return _digits(split)
    if name == "imagefolder":
        return _imagefolder(split, root, image_size)
    return _torchvision(name, split, root, download, verify_checksums)


def iterate_batches(data: ImageData | FolderData, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                    device: str | torch.device = "cpu", drop_last: bool = False
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images float [0,1] on device, labels) batches; shuffled with a seeded permutation."""
    if isinstance(data, FolderData):
        gen = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(data.dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                                             drop_last=drop_last, num_workers=min(8, os.cpu_count() or 1))
        for x, y in loader:
            yield x.to(device), y.to(device)
        return
    n = len(data)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield data.images[idx].to(device).float().div_(255), data.labels[idx].to(device)


def augment_flip_crop(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flips and reflect-padded random crops for a whole batch at once."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1).to(x.device), x.flip(3), x)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()  # one shift per batch: cheap
    return padded[:, :, dy:dy + h, dx:dx + w]
