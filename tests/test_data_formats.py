"""`lib.core.data` on tiny files written in each real dataset's official on-disk format.

Every torchvision-backed dataset is loaded through the real code path, `load_dataset(name, split, root,
download=False, verify_checksums=...)`, so torchvision's own parsers read the files. The files hold a few
images with known pixels and labels, and the tests check that they come back exactly as uint8 (N, C, H, W).

The CIFAR pickles are written the way the official Python 2 pickles are: protocol 2 with every string as a
Python 2 `str` (SHORT_BINSTRING / BINSTRING opcodes), numpy's raw bytes included. Read with
encoding="latin1" (what torchvision does) the keys come back as `str`; read with encoding="bytes" they
come back as b"data", b"labels", ...; read with the default ASCII decoding they fail, as the real files do.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib.core import data as D
from lib.core import shapes

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_NAMES = [f"fine_class_{i:02d}" for i in range(100)]  # 100 distinct names; only their order matters


# ----------------------------------------------------------------------------------------------- writers

class _Py2Pickler(pickle._Pickler):
    """Pickles `bytes` as Python 2 `str` (what cPickle wrote for the official CIFAR batches)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _py2(obj):
    """Python 3 strings → Python 2 byte strings, recursively (dict keys, lists, values)."""
    if isinstance(obj, str):
        return obj.encode("latin1")
    if isinstance(obj, dict):
        return {_py2(k): _py2(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_py2(v) for v in obj]
    return obj


def _write_py2_pickle(path: Path, obj) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(_py2(obj))
    path.write_bytes(buf.getvalue())


def _images(rng: np.random.Generator, n: int, channels: int, size: int) -> np.ndarray:
    """n random uint8 images (n, C, H, W) whose first pixel encodes the index (so order is checked too)."""
    x = rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n, dtype=np.uint8) * 17 + 5
    return x


def _write_cifar(root: Path, rng, hundred: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 (cifar-10-batches-py) or CIFAR-100 (cifar-100-python). Returns {split: (images, labels)}."""
    if hundred:
        folder = root / "cifar-100-python"
        batches = {"train": [("train", 3)], "test": [("test", 2)]}
        num_classes, label_key = 100, "fine_labels"
        meta_name = "meta"
        meta = {"fine_label_names": CIFAR100_NAMES, "coarse_label_names": [f"coarse_{i}" for i in range(20)]}
    else:
        folder = root / "cifar-10-batches-py"
        batches = {"train": [(f"data_batch_{i}", n) for i, n in zip(range(1, 6), (2, 1, 1, 0, 2))],
                   "test": [("test_batch", 3)]}
        num_classes, label_key = 10, "labels"
        meta_name = "batches.meta"
        meta = {"num_cases_per_batch": 10000, "label_names": CIFAR10_NAMES, "num_vis": 3072}
    folder.mkdir(parents=True)
    out = {}
    for split, files in batches.items():
        all_x, all_y = [], []
        for file_name, n in files:
            x = _images(rng, n, 3, 32)
            y = rng.integers(0, num_classes, size=n).tolist()
            entry = {"batch_label": f"{split} batch", "data": x.reshape(n, 3072),  # row-major CHW per row
                     "filenames": [f"img_{i}.png" for i in range(n)], label_key: y}
            if hundred:
                entry["coarse_labels"] = [label // 5 for label in y]
            _write_py2_pickle(folder / file_name, entry)
            all_x.append(x)
            all_y += y
        out[split] = (np.concatenate(all_x), np.array(all_y, dtype=np.int64))
    _write_py2_pickle(folder / meta_name, meta)
    return out


def _write_svhn(root: Path, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train_32x32.mat / test_32x32.mat: X (32, 32, 3, N) uint8 (H, W, C, N), y (N, 1) with 10 for digit 0."""
    import scipy.io

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, digits in {"train": [0, 3, 9], "test": [7, 0]}.items():
        x = _images(rng, len(digits), 3, 32)
        y_mat = np.array([[10 if d == 0 else d] for d in digits], dtype=np.uint8)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": np.ascontiguousarray(x.transpose(2, 3, 1, 0)),
                                                        "y": y_mat})
        out[split] = (x, np.array(digits, dtype=np.int64))
    return out


def _idx(array: np.ndarray) -> bytes:
    """The idx format: two zero bytes, type 0x08 (uint8), number of dims, big-endian int32 dims, the data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(root: Path, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (+ the .gz that torchvision downloads)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, prefix, n in (("train", "train", 3), ("test", "t10k", 2)):
        x = _images(rng, n, 1, 28)
        y = rng.integers(0, 10, size=n)
        for name, blob in ((f"{prefix}-images-idx3-ubyte", _idx(x[:, 0])), (f"{prefix}-labels-idx1-ubyte", _idx(y))):
            (raw / name).write_bytes(blob)
            (raw / f"{name}.gz").write_bytes(gzip.compress(blob))
        out[split] = (x, y.astype(np.int64))
    return out


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _assert_round_trip(ds, images: np.ndarray, labels: np.ndarray, classes) -> None:
    assert isinstance(ds, D.ImageData)
    assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
    assert tuple(ds.images.shape) == images.shape and tuple(ds.labels.shape) == labels.shape
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert torch.equal(ds.labels, torch.from_numpy(labels))
    assert ds.classes == tuple(classes)
    assert len(ds) == len(labels)


# ------------------------------------------------------------------------------------- official formats

def test_idx_and_py2_pickle_writers_match_the_official_encodings(tmp_path):
    """The writers themselves: idx magic numbers, and CIFAR pickles that need latin1 like the real ones."""
    blob = _idx(np.zeros((2, 28, 28), np.uint8))
    assert struct.unpack(">iiii", blob[:16]) == (2051, 2, 28, 28)
    assert struct.unpack(">ii", _idx(np.zeros(5, np.uint8))[:8]) == (2049, 5)
    path = tmp_path / "batch"
    _write_py2_pickle(path, {"data": np.full((1, 3072), 200, np.uint8), "labels": [1]})
    assert set(pickle.loads(path.read_bytes(), encoding="bytes")) == {b"data", b"labels"}
    assert set(pickle.loads(path.read_bytes(), encoding="latin1")) == {"data", "labels"}
    with pytest.raises(UnicodeDecodeError):  # numpy's raw bytes are a Python 2 str: ASCII cannot decode them
        pickle.loads(path.read_bytes())


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_round_trip(tmp_path, split):
    written = _write_cifar(tmp_path, np.random.default_rng(10))
    ds = D.load_dataset("cifar10", split, tmp_path, download=False, verify_checksums=False)
    _assert_round_trip(ds, *written[split], CIFAR10_NAMES)
    assert ds.images.shape[1:] == (3, 32, 32) and ds.info.num_classes == 10


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_round_trip(tmp_path, split):
    written = _write_cifar(tmp_path, np.random.default_rng(100), hundred=True)
    ds = D.load_dataset("cifar100", split, tmp_path, download=False, verify_checksums=False)
    _assert_round_trip(ds, *written[split], CIFAR100_NAMES)
    assert len(ds.classes) == ds.info.num_classes == 100


@pytest.mark.parametrize("split", ["train", "test"])
def test_svhn_round_trip_maps_label_10_to_digit_0(tmp_path, split):
    written = _write_svhn(tmp_path, np.random.default_rng(7))
    ds = D.load_dataset("svhn", split, tmp_path, download=False, verify_checksums=False)
    _assert_round_trip(ds, *written[split], [str(i) for i in range(10)])
    assert 0 in ds.labels.tolist() and 10 not in ds.labels.tolist()


@pytest.mark.parametrize("verify", [True, False])  # MNIST has no checksum on the unpacked files either way
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_round_trip(tmp_path, split, verify):
    written = _write_mnist(tmp_path, np.random.default_rng(28))
    ds = D.load_dataset("mnist", split, tmp_path, download=False, verify_checksums=verify)
    from torchvision.datasets import MNIST
    _assert_round_trip(ds, *written[split], MNIST.classes)
    assert ds.images.shape[1:] == (1, 28, 28)


def test_mnist_reads_the_unpacked_files_not_the_gz(tmp_path):
    written = _write_mnist(tmp_path, np.random.default_rng(28))
    for gz in (tmp_path / "MNIST" / "raw").glob("*.gz"):
        gz.unlink()
    from torchvision.datasets import MNIST
    _assert_round_trip(D.load_dataset("mnist", "test", tmp_path), *written["test"], MNIST.classes)
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()  # torchvision wants all four
    with pytest.raises(FileNotFoundError, match="download=True"):
        D.load_dataset("mnist", "test", tmp_path)


def _write_folder(root: Path, rng, size: int = 32, counts=(("cat", 2), ("ant", 1), ("bee", 2)),
                  splits=("train", "test")) -> dict:
    """root/<split>/<class>/img<i>.png at size × size. Returns {(split, class, i): HWC uint8}."""
    written = {}
    for split in splits:
        for cls, n in counts:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                hwc = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(hwc).save(root / split / cls / f"img{i}.png")
                written[(split, cls, i)] = hwc
    return written


def test_imagefolder_round_trip(tmp_path):
    """PNGs already at image_size come back exactly, in ImageFolder's order (sorted classes, then files)."""
    from lib.core.image_folder import FolderData

    written = _write_folder(tmp_path, np.random.default_rng(3))
    ds = D.load_dataset("imagefolder", "train", tmp_path, image_size=32)
    assert isinstance(ds, FolderData) and len(ds) == 5
    assert ds.classes == ("ant", "bee", "cat")  # sorted folder names → label indices
    assert ds.info == D.DatasetInfo(3, 32, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = [(cls, i) for cls in ds.classes for i in range(2) if ("train", cls, i) in written]
    decoded = ds.subset(None)  # everything, decoded: an ImageData like every other dataset's
    assert isinstance(decoded, D.ImageData) and decoded.images.dtype == torch.uint8 and decoded.info == ds.info
    for k, (cls, i) in enumerate(expected):
        assert decoded.labels[k] == ds.classes.index(cls)
        assert torch.equal(decoded.images[k], torch.from_numpy(written[("train", cls, i)]).permute(2, 0, 1))
        x, y = ds[k]
        assert x.dtype == torch.float32 and torch.equal(x, decoded.images[k].float() / 255) and y == decoded.labels[k]
    assert decoded.labels.tolist() == ds.labels.tolist() == [0, 1, 1, 2, 2]
    # subset picks the images ImageData.subset picks; iterate_batches streams them in the in-memory order
    assert torch.equal(ds.subset(3, seed=4).images, decoded.subset(3, seed=4).images)
    assert torch.equal(ds.tensors()[0], decoded.tensors()[0])
    for shuffle in (False, True):
        streamed = list(D.iterate_batches(ds, 2, shuffle=shuffle, seed=1))
        in_memory = list(D.iterate_batches(decoded, 2, shuffle=shuffle, seed=1))
        assert [b[0].shape[0] for b in streamed] == [2, 2, 1]
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(streamed, in_memory))
    assert [len(y) for _, y in D.iterate_batches(ds, 2, drop_last=True)] == [2, 2]


def test_imagefolder_resizes_to_image_size(tmp_path):
    """Shorter side to image_size, central square kept; grayscale and palette images become RGB."""
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (60, 40), (10, 200, 30)).save(tmp_path / "train" / "a" / "wide.png")
    Image.new("L", (20, 20), 77).save(tmp_path / "train" / "a" / "gray.png")
    Image.new("P", (64, 64), 3).save(tmp_path / "train" / "a" / "palette.png")
    ds = D.load_dataset(str(tmp_path), "train", image_size=16)  # the folder's path as the dataset
    images = ds.subset(None).images
    assert images.shape == (3, 3, 16, 16) and ds.info.size == 16
    by_name = dict(zip(["gray", "palette", "wide"], images))  # sorted file names
    assert (by_name["wide"] == torch.tensor([10, 200, 30]).view(3, 1, 1)).all()
    assert (by_name["gray"] == 77).all()
    assert D.load_dataset(str(tmp_path), "train").subset(1).images.shape[-1] == D.DEFAULT_IMAGE_SIZE


def test_imagefolder_decodes_only_what_fits(tmp_path, monkeypatch):
    from lib.core import image_folder

    _write_folder(tmp_path, np.random.default_rng(0), splits=("test",))
    ds = D.load_dataset("imagefolder", "test", tmp_path, image_size=32)
    monkeypatch.setattr(image_folder, "MAX_DECODED_BYTES", 3 * 32 * 32 * 2)  # two images
    assert len(ds.subset(2)) == 2
    with pytest.raises(ValueError, match="iterate_batches") as info:
        ds.subset(3)
    assert "image_size=32" in str(info.value) and str(tmp_path) in str(info.value)
    assert sum(len(y) for _, y in D.iterate_batches(ds, 2)) == 5  # streaming has no limit


def test_imagefolder_spec_changes_with_the_files(tmp_path):
    """data_spec: path, classes, files, fingerprint, size; the scan memo notices added and removed files."""
    _write_folder(tmp_path, np.random.default_rng(0))
    spec = D.data_spec("imagefolder", tmp_path, image_size=32)
    assert spec["dataset"] == "imagefolder" and spec["data"]["files"] == {"train": 5, "test": 5}
    assert spec["data"]["classes"] == ["ant", "bee", "cat"] and spec["data"]["root"] == str(tmp_path.resolve())
    assert D.data_spec("imagefolder", tmp_path, image_size=64)["data"]["image_size"] == 64
    extra = tmp_path / "test" / "ant" / "img9.png"
    Image.new("RGB", (32, 32)).save(extra)
    grown = D.data_spec("imagefolder", tmp_path, image_size=32)
    assert grown["data"]["files"]["test"] == 6 and grown["data"]["fingerprint"] != spec["data"]["fingerprint"]
    extra.unlink()
    assert D.data_spec("imagefolder", tmp_path, image_size=32) == spec
    assert D.data_spec("cifar10", tmp_path) == {"dataset": "cifar10"}  # named datasets: the name, as always


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "test" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        D.load_dataset("imagefolder", "test", tmp_path, image_size=8).subset(None)


# -------------------------------------------------------------------------------------------- checksums

@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_fake_files_fail_checksum_verification_clearly(tmp_path, name):
    rng = np.random.default_rng(0)
    {"cifar10": lambda: _write_cifar(tmp_path, rng), "cifar100": lambda: _write_cifar(tmp_path, rng, True),
     "svhn": lambda: _write_svhn(tmp_path, rng)}[name]()
    with pytest.raises(ValueError, match="MD5 checksums") as info:
        D.load_dataset(name, "test", tmp_path, download=False, verify_checksums=True)
    assert str(tmp_path) in str(info.value) and "verify_checksums=False" in str(info.value)


def test_cifar10_verified_path_parses_the_same_files(tmp_path, monkeypatch):
    """Official files pass verification: the fake files' own MD5s stand in for the official sums."""
    from torchvision.datasets import CIFAR10

    written = _write_cifar(tmp_path, np.random.default_rng(10))
    base = tmp_path / CIFAR10.base_folder
    monkeypatch.setattr(CIFAR10, "train_list", [[f, _md5(base / f)] for f, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[f, _md5(base / f)] for f, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": _md5(base / CIFAR10.meta["filename"])})
    for split in ("train", "test"):
        verified = D.load_dataset("cifar10", split, tmp_path, download=False, verify_checksums=True)
        unverified = D.load_dataset("cifar10", split, tmp_path, download=False, verify_checksums=False)
        _assert_round_trip(verified, *written[split], CIFAR10_NAMES)
        assert torch.equal(verified.images, unverified.images) and torch.equal(verified.labels, unverified.labels)
    # a corrupted meta file under verification is the checksum error, not a missing dataset
    (base / "batches.meta").write_bytes((base / "batches.meta").read_bytes() + b"\0")
    with pytest.raises(ValueError, match="MD5 checksums"):
        D.load_dataset("cifar10", "test", tmp_path, verify_checksums=True)


def test_svhn_verified_path_parses_the_same_files(tmp_path, monkeypatch):
    from torchvision.datasets import SVHN

    written = _write_svhn(tmp_path, np.random.default_rng(7))
    split_list = {k: [url, f, _md5(tmp_path / f) if (tmp_path / f).exists() else md5]
                  for k, (url, f, md5) in SVHN.split_list.items()}
    monkeypatch.setattr(SVHN, "split_list", split_list)
    for split in ("train", "test"):
        _assert_round_trip(D.load_dataset("svhn", split, tmp_path, verify_checksums=True), *written[split],
                           [str(i) for i in range(10)])


# ----------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "mnist"])
def test_missing_dataset_names_root_and_download(tmp_path, name, verify):
    root = tmp_path / "no_data_here"
    with pytest.raises(FileNotFoundError) as info:
        D.load_dataset(name, "train", root, download=False, verify_checksums=verify)
    assert str(root) in str(info.value) and "download=True" in str(info.value)


def test_missing_imagefolder_names_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageFolder") as info:
        D.load_dataset("imagefolder", "test", tmp_path)
    assert f"data_root={str(tmp_path)!r}" in str(info.value) and "<folder>/test/<class name>/<image>" in str(info.value)
    _write_folder(tmp_path, np.random.default_rng(0), splits=("train",))
    with pytest.raises(FileNotFoundError, match="has no test/ folder"):
        D.load_dataset("imagefolder", "test", tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        D.load_dataset("imagefolder", "test", tmp_path / "nowhere")


def test_partial_cifar_is_missing_not_a_checksum_error(tmp_path):
    _write_cifar(tmp_path, np.random.default_rng(0))
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    for verify in (True, False):
        with pytest.raises(FileNotFoundError, match="download=True"):
            D.load_dataset("cifar10", "test", tmp_path, verify_checksums=verify)


def test_unknown_name_and_split(tmp_path):
    with pytest.raises(ValueError) as info:
        D.load_dataset("imagenet21k", "train", tmp_path)
    assert all(name in str(info.value) for name in D.DATASETS)
    with pytest.raises(ValueError, match="split"):
        D.load_dataset("cifar10", "validation", tmp_path)
    with pytest.raises(ValueError, match="split"):
        D.load_dataset("shapes10", "val", tmp_path)


# ----------------------------------------------------------------------------------------- batching

def test_iterate_batches_floats_and_sizes(tmp_path):
    written = _write_cifar(tmp_path, np.random.default_rng(10))
    ds = D.load_dataset("cifar10", "train", tmp_path, verify_checksums=False)  # 6 images
    batches = list(D.iterate_batches(ds, 4))
    assert [len(y) for _, y in batches] == [4, 2]
    for x, _ in batches:
        assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    x_all = torch.cat([x for x, _ in batches])
    assert torch.equal((x_all * 255).round().to(torch.uint8), torch.from_numpy(written["train"][0]))
    assert [len(y) for _, y in D.iterate_batches(ds, 4, drop_last=True)] == [4]
    shuffled = torch.cat([y for _, y in D.iterate_batches(ds, 4, shuffle=True, seed=1)])
    again = torch.cat([y for _, y in D.iterate_batches(ds, 4, shuffle=True, seed=1)])
    assert torch.equal(shuffled, again) and sorted(shuffled.tolist()) == sorted(ds.labels.tolist())
    x, y = ds[0]
    assert x.dtype == torch.float32 and torch.equal(x, ds.images[0].float() / 255) and y == ds.labels[0]


# ----------------------------------------------------------------------------------- embedded datasets

@pytest.fixture(scope="module")
def shapes10_splits():
    return D.load_dataset("shapes10", "train"), D.load_dataset("shapes10", "test")


def test_shapes10_sizes_and_balance(shapes10_splits):
    for ds, n in zip(shapes10_splits, (20_000, 2_000)):
        assert tuple(ds.images.shape) == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
        assert torch.bincount(ds.labels, minlength=10).tolist() == [n // 10] * 10
        assert ds.classes == shapes.CLASSES and len(ds.classes) == 10
    train, test = shapes10_splits
    assert not torch.equal(train.images[:2000], test.images)  # the splits use different generation seeds


def test_shapes10_deterministic_per_seed(shapes10_splits):
    test = shapes10_splits[1]
    D._shapes10.cache_clear()  # make the next load regenerate instead of returning the cached object
    again = D.load_dataset("shapes10", "test", seed=0)
    assert again is not test
    assert again.images.numpy().tobytes() == test.images.numpy().tobytes()
    assert torch.equal(again.labels, test.labels)
    # another seed, on a few images (the generator is the one load_dataset calls)
    a, b, c = (shapes.generate_shapes10(40, seed=s) for s in (5, 5, 6))
    assert a[0].numpy().tobytes() == b[0].numpy().tobytes() and torch.equal(a[1], b[1])
    assert a[0].numpy().tobytes() != c[0].numpy().tobytes()


def test_digits_shape():
    train, test = D.load_dataset("digits", "train"), D.load_dataset("digits", "test")
    assert test.images.shape[1:] == train.images.shape[1:] == (1, 8, 8)
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert set(train.labels.tolist()) == set(range(10))
