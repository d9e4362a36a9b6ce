"""CIFAR-10 and CIFAR-100 from the official python archives.

The first call downloads the archive into the cache folder (``data_dir``, else
$MINIVGG_DATA, else ~/.cache/minivgg), checks its published MD5 and unpacks it safely;
an existing unpacked folder is used as it is. The batches are pickles written by Python 2,
read with a restricted unpickler that builds NumPy arrays and nothing else. The parsed
arrays are then cached as one uint8 .npz file, so later loads take a fraction of a second.

Each row of a batch's ``data`` is one image, 3072 bytes: 1024 red, 1024 green, 1024 blue
values in row-major order, so ``data.reshape(-1, 3, 32, 32)`` is already NCHW.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minivgg.data.dataset import Dataset
from minivgg.data.download import cache_dir, download, safe_extract
from minivgg.data.safe_pickle import restricted_load

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"


@dataclass(frozen=True)
class CifarLayout:
    """Where things are inside one of the official archives."""

    name: str
    url: str
    md5: str
    folder: str                  # the folder the archive unpacks to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_keys: dict[str, str]   # label key in a batch -> key of its class names in meta


CIFAR10 = CifarLayout("cifar10", CIFAR10_URL, CIFAR10_MD5, "cifar-10-batches-py",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                      "batches.meta", {"labels": "label_names"})
CIFAR100 = CifarLayout("cifar100", CIFAR100_URL, CIFAR100_MD5, "cifar-100-python",
                       ("train",), ("test",), "meta",
                       {"fine_labels": "fine_label_names",
                        "coarse_labels": "coarse_label_names"})


def load_cifar10(data_dir=None, download: bool = True, url: str | None = None,
                 md5: str | None = None) -> Dataset:
    """CIFAR-10: 50,000 train and 10,000 test images, uint8 (N, 3, 32, 32), 10 classes.

    ``data_dir`` may be the folder holding ``cifar-10-batches-py`` or that folder itself.
    ``url`` and ``md5`` override the download address and its checksum (for a mirror, or a
    local server in the tests).
    """
    arrays = load_cifar_arrays(CIFAR10, data_dir, download, url, md5)
    return _dataset(arrays, "cifar10", "labels", "label_names")


def load_cifar100(data_dir=None, download: bool = True, url: str | None = None,
                  md5: str | None = None, label_mode: str = "fine") -> Dataset:
    """CIFAR-100: 50,000 train and 10,000 test images, uint8 (N, 3, 32, 32).

    ``label_mode="fine"`` gives the 100 classes, ``"coarse"`` the 20 superclasses.
    """
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"load_cifar100: label_mode must be 'fine' or 'coarse'; "
                         f"got {label_mode!r}")
    arrays = load_cifar_arrays(CIFAR100, data_dir, download, url, md5)
    return _dataset(arrays, f"cifar100-{label_mode}" if label_mode == "coarse" else "cifar100",
                    f"{label_mode}_labels", f"{label_mode}_label_names")


def _dataset(arrays, name, label_key, names_key) -> Dataset:
    return Dataset(name=name,
                   train_images=arrays["train_images"], train_labels=arrays[f"train_{label_key}"],
                   test_images=arrays["test_images"], test_labels=arrays[f"test_{label_key}"],
                   classes=[str(n) for n in arrays[names_key]])


def find_folder(layout: CifarLayout, root: Path) -> Path | None:
    """The unpacked folder under ``root`` (or ``root`` itself), or None."""
    for candidate in (root / layout.folder, root):
        if (candidate / layout.meta_file).is_file():
            return candidate
    return None


def load_cifar_arrays(layout: CifarLayout, data_dir=None, download_ok: bool = True,
                      url: str | None = None, md5: str | None = None
                      ) -> dict[str, np.ndarray]:
    """Find (or download and unpack) a CIFAR folder and return its parsed arrays."""
    root = cache_dir(data_dir)
    folder = find_folder(layout, root)
    if folder is None:
        if not download_ok:
            raise FileNotFoundError(
                f"{layout.name}: no {layout.folder}/ (with {layout.meta_file}) in {root} and "
                "download=False; download it or point data_dir at an unpacked copy.")
        url = url or layout.url
        archive = download(url, root / url.rsplit("/", 1)[-1], md5=md5 or layout.md5)
        safe_extract(archive, root)
        folder = find_folder(layout, root)
        if folder is None:
            raise FileNotFoundError(f"{layout.name}: the archive {archive} did not contain "
                                    f"{layout.folder}/{layout.meta_file}")
    return _cached(layout, folder)


def _cached(layout: CifarLayout, folder: Path) -> dict[str, np.ndarray]:
    """The parsed arrays of ``folder``, from the .npz cache when it matches the files.

    The cache lives in the cache folder, named after the source folder's absolute path, and
    records the size and modification time of every batch: a changed file means a re-parse.
    """
    sources = [folder / f for f in (layout.meta_file, *layout.train_files, *layout.test_files)]
    for path in sources:
        if not path.is_file():
            raise FileNotFoundError(f"{layout.name}: {path} is missing; expected the files "
                                    f"{[p.name for p in sources]} in {folder}")
    fingerprint = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                           for p in sources)
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    cache_file = cache_dir() / "parsed" / f"{layout.folder}-{key}.npz"
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as npz:
            if str(npz["fingerprint"]) == fingerprint:
                return {k: npz[k] for k in npz.files if k != "fingerprint"}
    arrays = parse_folder(layout, folder)
    try:
        _save_npz(cache_file, fingerprint=np.array(fingerprint), **arrays)
    except OSError as exc:  # a read-only cache only costs speed
        warnings.warn(f"could not write the CIFAR cache {cache_file}: {exc}", stacklevel=3)
    return arrays


def _save_npz(path: Path, **arrays) -> None:
    """np.savez, written to a temporary file and renamed, so a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def parse_folder(layout: CifarLayout, folder: Path) -> dict[str, np.ndarray]:
    """Read the batches of an unpacked folder into uint8 images and int64 labels."""
    meta = _text_keys(restricted_load(folder / layout.meta_file))
    arrays = {}
    for split, files in (("train", layout.train_files), ("test", layout.test_files)):
        batches = [_read_batch(layout, folder / name) for name in files]
        arrays[f"{split}_images"] = np.concatenate([b["data"] for b in batches])
        for key in layout.label_keys:
            arrays[f"{split}_{key}"] = np.concatenate([b[key] for b in batches])
    for names_key in layout.label_keys.values():
        arrays[names_key] = np.array([_text(n) for n in meta[names_key]])
    return arrays


def _read_batch(layout: CifarLayout, path: Path) -> dict[str, np.ndarray]:
    batch = _text_keys(restricted_load(path))
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (rows, 3072); "
                         f"got {got}")
    out = {"data": data.reshape(-1, 3, 32, 32)}
    for key in layout.label_keys:
        labels = np.asarray(batch.get(key, []), dtype=np.int64)
        if labels.shape != (len(data),):
            raise ValueError(f"{path}: expected {len(data)} {key!r}, got {labels.shape}")
        out[key] = labels
    return out


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _text_keys(mapping) -> dict:
    if not isinstance(mapping, dict):
        raise ValueError(f"expected a CIFAR batch (a dict); got {type(mapping).__name__}")
    return {_text(k): v for k, v in mapping.items()}
