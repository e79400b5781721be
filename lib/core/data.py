"""Datasets behind one function, `load_dataset(name, split, root, download)`, and what models need to know of them.

Small datasets are held in memory as uint8 NCHW tensors and batched without per-image Python work
(airbench style): the embedded `shapes10`, scikit-learn's `digits`, and torchvision's CIFAR-10,
CIFAR-100, SVHN and MNIST, read from their official on-disk formats by torchvision's own classes.
Any image folder (`<folder>/<split>/<class>/<image>`: dataset='imagefolder' with data_root=<folder>, or the
folder's path as the dataset) is read at `image_size` by lib.core.image_folder: lazily, with subsets decoded
into memory, its class names from its subfolders.

- `dataset_info(dataset, root)`: channels, size, class count and normalisation statistics (a folder's from
  the folder); `image_shape(dataset)`: channels and size alone, without reading anything; `data_spec(dataset,
  root)`: what identifies the data in a model spec (`{"dataset": name}` for the named datasets, as always; a
  folder adds `"data"`: path, classes, files, fingerprint, image size); `check_dataset`: all of a notebook's
  data arguments checked before any work starts.
- Data options: `data_root`, `image_size` and `verify_checksums` default to this process's `DataOptions`,
  which `lib.run.notebook.start_run` sets from the notebook's parameters. So the library code a notebook
  calls (getters that load data, build classifiers or write model specs) sees the notebook's data without
  passing the options through every signature; an explicit argument always wins, `using_data_options` sets
  them for a block of code, and each `start_run` sets all three (absent parameters reset to the defaults).
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from lib.core.provenance import REPO
from lib.core import shapes
from lib.core.settings import check_count

if TYPE_CHECKING:  # lib.core.image_folder builds on this module's ImageData: imported where needed
    from lib.core.image_folder import FolderData, FolderIndex

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
}
DATASETS = (*INFO, "imagefolder")  # imagefolder: any folder, its info read from it (lib.core.image_folder)
DEFAULT_IMAGE_SIZE = 224  # an image folder's resolution when image_size is not given (ImageNet's)
_SIZE_HINT = (f"image_size is the side in pixels an image folder is read at, e.g. image_size=32 (-p image_size 32); "
              f"None reads it at {DEFAULT_IMAGE_SIZE}.")
SHAPES10_SIZES = {"train": 20_000, "test": 2_000}


@dataclass(frozen=True)
class ImageData:
    """An in-memory image dataset: uint8 images (N, C, H, W), int64 labels (N,), and its DatasetInfo.

    masks: bool (N, H, W), True on the object, for a dataset that knows where its objects are (shapes10's,
    from its generator); None otherwise. `take` and `subset` keep them aligned with the images.
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    info: DatasetInfo | None = None  # None: the named dataset's, INFO[name] (a decoded folder passes its own)
    masks: torch.Tensor | None = None

    def __post_init__(self):
        if self.info is None:
            object.__setattr__(self, "info", dataset_info(self.name))

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i):
        return self.images[i].float() / 255, self.labels[i]

    def take(self, idx: torch.Tensor) -> "ImageData":
        """The images at the indices idx."""
        masks = None if self.masks is None else self.masks[idx]
        return replace(self, images=self.images[idx], labels=self.labels[idx], masks=masks)

    def subset(self, n: int | None, seed: int = 0) -> "ImageData":
        """The first n images of a seeded permutation (all of them when n is None or larger)."""
        if n is None or n >= len(self):
            return self
        return self.take(torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n])

    def tensors(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """All images as floats in [0, 1] and the labels, on a device."""
        return self.images.to(device).float().div_(255), self.labels.to(device)

    def object_masks(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The object masks, bool (N, H, W), aligned with `tensors()`; an error for a dataset without them."""
        if self.masks is None:
            raise ValueError(f"{self.name} ({self.split}) has no object masks: only the embedded shapes10 knows "
                             "where its objects are (load_dataset('shapes10', ...)).")
        return self.masks.to(device)


@dataclass(frozen=True)
class DataOptions:
    """This process's defaults for load_dataset's data_root, image_size and verify_checksums (module docstring).

    root: where the real datasets live, or the image folder for dataset='imagefolder' (None: $PURIFY_DATA_ROOT,
    else ./data). image_size: the side in pixels image folders are read at (None: DEFAULT_IMAGE_SIZE; the
    named datasets keep their own size). verify_checksums: compare torchvision datasets with the official MD5
    sums (False: any files in the official format, e.g. a re-packed copy; see `_unverified`).
    """

    root: str | os.PathLike | None = None
    image_size: int | None = None
    verify_checksums: bool = True

    def __post_init__(self):
        if self.root is not None and not isinstance(self.root, (str, os.PathLike)):
            raise TypeError(f"data_root must be a folder path (str) or None; got {self.root!r} "
                            f"({type(self.root).__name__}).")
        if self.image_size is not None:
            check_count(self.image_size, "image_size", 1, _SIZE_HINT)
        if not isinstance(self.verify_checksums, bool):
            raise TypeError(f"verify_checksums must be True or False; got {self.verify_checksums!r} "
                            f"({type(self.verify_checksums).__name__}). Pass False (-p verify_checksums False) "
                            "to read files in the official format that are not the official bytes.")


_options = DataOptions()


def get_data_options() -> DataOptions:
    return _options


def set_data_options(root: str | os.PathLike | None = None, image_size: int | None = None,
                     verify_checksums: bool = True) -> DataOptions:
    """Set all three data options for this process (checked first); returns the previous ones."""
    global _options
    previous, _options = _options, DataOptions(root, image_size, verify_checksums)
    return previous


@contextmanager
def using_data_options(**options):
    """Data options for a block of code (the others keep their current values), restored afterwards."""
    previous = set_data_options(**{**vars(_options), **options})
    try:
        yield _options
    finally:
        set_data_options(**vars(previous))


def default_root() -> Path:
    """data_root when none is passed: the data options', else $PURIFY_DATA_ROOT, else ./data."""
    root = _options.root if _options.root is not None else os.environ.get("PURIFY_DATA_ROOT", REPO / "data")
    return Path(root).expanduser()


def _root(root) -> Path:
    return Path(root).expanduser() if root is not None else default_root()


def is_folder(dataset) -> bool:
    """Whether `dataset` names an image folder (True) or a named dataset (False); anything else is an error.

    A folder is dataset='imagefolder' with data_root=<folder> (default: `default_root()`), or the folder's own
    path as dataset (then data_root is not used).
    """
    if isinstance(dataset, str) and dataset in INFO:
        return False
    if dataset == "imagefolder" or (isinstance(dataset, (str, os.PathLike)) and str(dataset)
                                    and Path(dataset).expanduser().is_dir()):
        return True
    raise ValueError(
        f"Unknown dataset: dataset={dataset!r} is neither one of {', '.join(DATASETS)} nor an existing image folder. "
        "Pass one of those names, or for your own images dataset='imagefolder' with data_root=<folder holding "
        "train/<class>/<image> and test/<class>/<image>>, or that folder's path as dataset (absolute, or "
        "relative to the working directory: notebooks/ under the papermill driver).")


def folder_root(dataset, root=None) -> tuple[Path, str] | None:
    """(the image folder, the argument that named it: 'data_root' or 'dataset'); None for a named dataset."""
    if not is_folder(dataset):
        return None
    return (_root(root), "data_root") if dataset == "imagefolder" else (Path(dataset).expanduser(), "dataset")


def _folder_size(image_size: int | None) -> int:
    size = image_size if image_size is not None else _options.image_size
    return check_count(size, "image_size", 1, _SIZE_HINT) if size is not None else DEFAULT_IMAGE_SIZE


def _check_named_size(name: str, image_size: int | None) -> None:
    """A named dataset has its own size: an explicit image_size must agree with it."""
    if image_size is not None and image_size != INFO[name].size:
        raise ValueError(f"image_size={image_size!r} applies to image folders; {name} images are "
                         f"{INFO[name].size}×{INFO[name].size}: leave image_size=None (or pass {INFO[name].size}).")


def _scanned(dataset, root) -> tuple[FolderIndex, str] | None:
    """(the folder's index, the argument that named it) for an image folder; None for a named dataset."""
    from lib.core.image_folder import scan

    folder = folder_root(dataset, root)
    return None if folder is None else (scan(*folder), folder[1])


def image_shape(dataset, image_size: int | None = None) -> tuple[int, int]:
    """(channels, side) of a dataset's images, reading nothing (a folder: RGB at image_size)."""
    if is_folder(dataset):
        return 3, _folder_size(image_size)
    _check_named_size(dataset, image_size)
    return INFO[dataset].channels, INFO[dataset].size


def dataset_info(dataset, root=None, *, image_size: int | None = None) -> DatasetInfo:
    """Channels, size, class count and normalisation statistics. A folder's: RGB at image_size, the class count of
    its subfolders, ImageNet's mean and std (a documented default, not measured: lib.core.image_folder)."""
    from lib.core.image_folder import folder_info

    scanned = _scanned(dataset, root)
    if scanned is None:
        _check_named_size(dataset, image_size)
        return INFO[dataset]
    return folder_info(scanned[0], _folder_size(image_size))


def data_spec(dataset, root=None, *, image_size: int | None = None) -> dict:
    """The fields that identify a dataset in a model spec: {"dataset": name} for a named dataset (exactly what
    specs have always held), {"dataset": "imagefolder", "data": lib.core.image_folder.folder_spec} for a folder."""
    from lib.core.image_folder import folder_spec

    scanned = _scanned(dataset, root)
    if scanned is None:
        _check_named_size(dataset, image_size)
        return {"dataset": dataset}
    return {"dataset": "imagefolder", "data": folder_spec(scanned[0], _folder_size(image_size))}


def check_dataset(dataset, root=None, *, image_size: int | None = None) -> DatasetInfo:
    """A notebook's data arguments checked before any work starts (start_run calls it); returns the info.

    An unknown name, an image_size that a named dataset cannot honour, or a folder without both splits, class
    folders or images, or whose splits disagree on the classes, is an error naming the argument and the fix.
    Named datasets' files are checked when they are loaded (the error says where to put them).
    """
    scanned = _scanned(dataset, root)
    if scanned is not None:
        from lib.core.image_folder import LAYOUT

        index, argument = scanned
        for split in SPLITS:
            if split not in index.files:
                raise FileNotFoundError(f"{argument}={str(index.root)!r} has no {split}/ folder: the notebooks train "
                                        f"on train/ and evaluate on test/. {LAYOUT}")
    return dataset_info(dataset, root, image_size=image_size)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: choose 'train' or 'test'.")


@functools.lru_cache(maxsize=8)
def _shapes10(split: str, seed: int) -> ImageData:
    images, labels, masks = shapes.generate_shapes10_masks(SHAPES10_SIZES[split], seed=2 * seed + (split == "test"))
    return ImageData("shapes10", split, images, labels, shapes.CLASSES, masks=masks)


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


def load_dataset(name, split: str = "train", root: str | os.PathLike | None = None,
                 download: bool = False, *, seed: int = 0, verify_checksums: bool | None = None,
                 image_size: int | None = None) -> ImageData | FolderData:
    """Load a dataset split: an ImageData in memory, or for an image folder a lazy FolderData (its `subset`,
    `take` and `tensors` decode into an ImageData; `iterate_batches` streams it).

    name: one of DATASETS, or an image folder's path. root: where the real datasets live, or the folder for
    'imagefolder' (default: `default_root()`). download: let torchvision fetch missing files. seed: the
    embedded dataset's generation seed. verify_checksums: compare torchvision datasets with the official MD5
    sums (see `_unverified`). image_size: an image folder's resolution (299 for Inception-v3; a named
    dataset's must be its own). verify_checksums, image_size and root default to the data options.
    """
    _check_split(split)
    scanned = _scanned(name, root)
    if scanned is not None:
        from lib.core.image_folder import load_folder

        return load_folder(scanned[0], split, _folder_size(image_size), scanned[1])
    _check_named_size(name, image_size)
    verify = _options.verify_checksums if verify_checksums is None else verify_checksums
    if name == "shapes10":
        return _shapes10(split, seed)
    if name == "digits":
        return _digits(split)
    return _torchvision(name, split, _root(root), download, verify)


def iterate_batches(data: ImageData | FolderData, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                    device: str | torch.device = "cpu", drop_last: bool = False
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images float [0,1] on device, labels) batches; shuffled with a seeded permutation."""
    if not isinstance(data, ImageData):  # an image folder: streamed from disk, in the same order
        yield from data.batches(batch_size, shuffle=shuffle, seed=seed, device=device, drop_last=drop_last)
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
