"""Image folders as datasets: `<root>/<split>/<class>/<image>`, read at one resolution, `image_size`.

    train = load_dataset("imagefolder", "train", "~/my_images", image_size=64)  # a FolderData (lazy)
    small = train.subset(512, seed=0)   # an in-memory ImageData (uint8), like every other dataset's
    for x, y in iterate_batches(train, 256): ...   # the whole split, streamed from disk

- Classes are a split's sorted subfolder names (torchvision ImageFolder's order, so label k is the k-th name);
  train and test must have the same ones. Images are the files with an image extension anywhere below a
  class folder (ImageFolder's rule).
- Each image is converted to RGB, its shorter side resized to `image_size` (bilinear, antialiased) and the
  central square kept: an image that is already image_size × image_size comes back unchanged.
- Normalisation statistics (`FOLDER_MEAN`, `FOLDER_STD`) are ImageNet's, a documented default, not measured
  on the folder: measuring would decode the whole train split before a model could be built, and the
  classifier's normalisation only sets the input scale (batch norm follows it).
- `FolderData` holds the index (paths and labels), not pixels. `subset`, `take` and `tensors` decode the images
  they return into an `ImageData`, refused above `MAX_DECODED_BYTES` so that an ImageNet-size split is never
  decoded whole by accident; `batches` (what `iterate_batches` calls) streams a split of any size.
- `folder_spec` identifies the data in a model spec: the folder's resolved path, its class names, the files
  per split, a fingerprint of every file's relative path and byte size, and the image size, so two different
  folders, or one whose files changed, never share a cached model.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from lib.core.data import SPLITS, DatasetInfo, ImageData

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's
FOLDER_MEAN = (0.485, 0.456, 0.406)  # ImageNet's statistics (see the module docstring)
FOLDER_STD = (0.229, 0.224, 0.225)
MAX_DECODED_BYTES = 4 * 2**30  # uint8 pixels decoded at once: 28k images at 224 px, 1.4M at 32 px
LAYOUT = ("An image folder is laid out as <folder>/train/<class name>/<image> and <folder>/test/<class name>/<image> "
          "(torchvision ImageFolder's layout; PNG, JPEG, ... images); pass dataset='imagefolder' with "
          "data_root=<folder>, or the folder's path as dataset.")


@dataclass(frozen=True)
class FolderIndex:
    """What a scan of an image folder found: the class names and every split's images with their labels."""

    root: Path
    classes: tuple[str, ...]
    files: dict[str, tuple[tuple[str, int], ...]]  # split -> ((path relative to root, label), ...)
    fingerprint: str  # sha256 of the class names and every file's relative path and byte size


def scan(root: Path, argument: str = "data_root") -> FolderIndex:
    """Index the folder (both splits that exist), checking its layout; memoised while its folders are unchanged.

    argument: the notebook argument that named the folder, for the error messages ('data_root' or 'dataset').
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{argument}={str(root)!r} is not a folder. {LAYOUT}")
    # adding, removing or renaming an image changes its folder's mtime, so the memo serves no stale index
    # (for images directly in a class folder; deeper subfolders are read but not watched)
    folders = [root] + [root / s for s in SPLITS if (root / s).is_dir()]
    folders += [d for split in folders[1:] for d in split.iterdir() if d.is_dir()]
    return _scan(root, argument, tuple(d.stat().st_mtime_ns for d in folders))


@functools.lru_cache(maxsize=4)  # an ImageNet index holds 1.3M paths
def _scan(root: Path, argument: str, _mtimes: tuple[int, ...]) -> FolderIndex:
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if not splits:
        raise FileNotFoundError(f"{argument}={str(root)!r} has no train/ or test/ folder. {LAYOUT}")
    classes = {}
    for split in splits:
        classes[split] = tuple(sorted(d.name for d in os.scandir(root / split)
                                      if d.is_dir() and not d.name.startswith(".")))
        if not classes[split]:
            raise ValueError(f"{argument}={str(root)!r}: {root / split} holds no class folders. {LAYOUT}")
    if len(splits) == 2 and classes["train"] != classes["test"]:
        train, test = set(classes["train"]), set(classes["test"])
        raise ValueError(
            f"{argument}={str(root)!r}: train/ and test/ have different class folders (only in train: "
            f"{sorted(train - test)}; only in test: {sorted(test - train)}). Labels are indices into the sorted "
            "class names, so both splits need the same class folders: add the missing ones or remove the extra ones.")
    names = classes[splits[0]]
    files, digest = {}, hashlib.sha256("\n".join(names).encode())
    for split in splits:
        found = []
        for label, name in enumerate(names):
            images = sorted(_images_below(root / split / name))
            if not images:
                raise ValueError(f"{argument}={str(root)!r}: the class folder {root / split / name} holds no images "
                                 f"(files ending in {', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder "
                                 "from both splits.")
            for path in images:
                rel = path.relative_to(root).as_posix()
                digest.update(f"\n{rel}\t{path.stat().st_size}".encode())
                found.append((rel, label))
        files[split] = tuple(found)
    return FolderIndex(root, names, files, digest.hexdigest()[:16])


def _images_below(folder: Path) -> Iterator[Path]:
    for parent, _, names in os.walk(folder, followlinks=True):
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                yield Path(parent) / name


def folder_info(index: FolderIndex, image_size: int) -> DatasetInfo:
    """RGB at image_size, the folder's own class count, ImageNet's statistics (see the module docstring)."""
    return DatasetInfo(3, image_size, len(index.classes), FOLDER_MEAN, FOLDER_STD)


def folder_spec(index: FolderIndex, image_size: int) -> dict:
    """What identifies the data in a model spec (see the module docstring)."""
    return {"root": str(index.root), "classes": list(index.classes),
            "files": {split: len(files) for split, files in index.files.items()},
            "fingerprint": index.fingerprint, "image_size": image_size}


class _Images(torch.utils.data.Dataset):
    """(uint8 image (3, s, s), label) per file; what DataLoader workers decode."""

    def __init__(self, paths: Sequence[Path], labels: torch.Tensor, image_size: int):
        from torchvision import transforms as T

        self.paths, self.labels = paths, labels
        # Resize(int) resizes the shorter side and leaves an image of that size as it is
        self.transform = T.Compose([T.Resize(image_size, antialias=True), T.CenterCrop(image_size), T.PILToTensor()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.paths[i]) as img:
                image = self.transform(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"Cannot read the image {self.paths[i]} ({err}): replace or remove it.") from err
        return image, self.labels[i]


def _workers(n: int) -> int:
    return 0 if n < 1024 else min(8, os.cpu_count() or 1)  # worker start-up costs more than a few images


@dataclass(frozen=True, eq=False)
class FolderData:
    """One split of an image folder, read lazily at `image_size` (see the module docstring)."""

    name: str
    split: str
    index: FolderIndex
    image_size: int
    labels: torch.Tensor  # int64 (N,)
    info: DatasetInfo

    @property
    def classes(self) -> tuple[str, ...]:
        return self.index.classes

    @functools.cached_property
    def dataset(self) -> torch.utils.data.Dataset:
        """The split as a torch Dataset of (uint8 image, label)."""
        paths = [self.index.root / rel for rel, _ in self.index.files[self.split]]
        return _Images(paths, self.labels, self.image_size)

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i):
        image, label = self.dataset[i]
        return image.float() / 255, label

    def take(self, idx: torch.Tensor | Sequence[int]) -> ImageData:
        """The images at `idx`, decoded into memory (refused above MAX_DECODED_BYTES)."""
        idx = torch.as_tensor(idx, dtype=torch.long).flatten()
        s = self.image_size
        need = len(idx) * 3 * s * s
        if need > MAX_DECODED_BYTES:
            raise ValueError(
                f"Decoding {len(idx)} images of {self.index.root}/{self.split} at image_size={s} needs "
                f"{need / 2**30:.1f} GiB, above lib.core.image_folder.MAX_DECODED_BYTES "
                f"({MAX_DECODED_BYTES / 2**30:.0f} GiB): take fewer (.subset(n, seed)), pass a smaller image_size, "
                "or stream the split with iterate_batches.")
        if len(idx):
            subset = torch.utils.data.Subset(self.dataset, idx.tolist())
            loader = torch.utils.data.DataLoader(subset, batch_size=256, num_workers=_workers(len(idx)))
            images = torch.cat([x for x, _ in loader])
        else:
            images = torch.empty((0, 3, s, s), dtype=torch.uint8)
        return ImageData(self.name, self.split, images, self.labels[idx], self.classes, self.info)

    def subset(self, n: int | None, seed: int = 0) -> ImageData:
        """The first n images of a seeded permutation (all of them when n is None or larger), decoded:
        the same images ImageData.subset picks from a decoded split."""
        if n is None or n >= len(self):
            return self.take(torch.arange(len(self)))
        return self.take(torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n])

    def tensors(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """All images as floats in [0, 1] and the labels, on a device (decodes the whole split)."""
        return self.subset(None).tensors(device)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, device: str | torch.device = "cpu",
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Stream (images float [0, 1] on device, labels) batches; the same order as iterate_batches on ImageData."""
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        subset = torch.utils.data.Subset(self.dataset, order.tolist())
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, drop_last=drop_last,
                                             num_workers=_workers(n))
        for x, y in loader:
            yield x.to(device).float().div_(255), y.to(device)


def load_folder(index: FolderIndex, split: str, image_size: int, argument: str = "data_root") -> FolderData:
    """One split of a scanned folder."""
    if split not in index.files:
        raise FileNotFoundError(f"{argument}={str(index.root)!r} has no {split}/ folder. {LAYOUT}")
    labels = torch.tensor([label for _, label in index.files[split]], dtype=torch.int64)
    return FolderData("imagefolder", split, index, image_size, labels, folder_info(index, image_size))
