"""CIFAR-10 and CIFAR-100 from the official python archives.

The first call downloads the archive into the cache folder (``data_dir``, else
$MINIVGG_DATA, else ~/.cache/minivgg), checks its published MD5 and unpacks it safely;
an existing unpacked folder is used as it is (a file it lacks is added from the archive;
nothing in it is ever replaced). The batches are pickles written by Python 2, read with a
restricted unpickler that builds NumPy arrays and nothing else, each file and array no
larger than the official batches can be. The parsed arrays are then cached as one uint8
.npz file keyed on the files' contents, so later loads take a fraction of a second.

Each row of a batch's ``data`` is one image, 3072 bytes: 1024 red, 1024 green, 1024 blue
values in row-major order, so ``data.reshape(-1, 3, 32, 32)`` is already NCHW.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minivgg.data.dataset import REFETCH_HINT, CorruptDataError, Dataset
from minivgg.data.download import cache_dir, download, extract_download
from minivgg.data.safe_pickle import restricted_load

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"


@dataclass(frozen=True)
class CifarLayout:
    """Where things are inside one of the official archives, and how big they may be."""

    name: str
    url: str
    md5: str
    folder: str                  # the folder the archive unpacks to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_keys: dict[str, str]   # label key in a batch -> key of its class names in meta
    train_rows: int              # the most images one train file holds (the official count)
    test_rows: int


CIFAR10 = CifarLayout("cifar10", CIFAR10_URL, CIFAR10_MD5, "cifar-10-batches-py",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                      "batches.meta", {"labels": "label_names"}, 10_000, 10_000)
CIFAR100 = CifarLayout("cifar100", CIFAR100_URL, CIFAR100_MD5, "cifar-100-python",
                       ("train",), ("test",), "meta",
                       {"fine_labels": "fine_label_names",
                        "coarse_labels": "coarse_label_names"}, 50_000, 10_000)

ROW_BYTES = 3 * 32 * 32
ROW_OVERHEAD = 128      # labels, file name and pickle opcodes per row (the real files: ~32)
META_MAX_BYTES = 1 << 20  # the real meta files are 158 bytes and 1.5 KB
CACHE_VERSION = "2"     # bump when parse_folder changes what it returns


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


def find_folder(layout: CifarLayout, root: Path) -> Path:
    """The folder under ``root`` (or ``root`` itself) that holds, or will hold, the files.

    A folder with the meta file wins; else ``root`` if it carries the archive's folder
    name; else ``root/<that name>``, where a download would put it.
    """
    for candidate in (root / layout.folder, root):
        if (candidate / layout.meta_file).is_file():
            return candidate
    return root if root.name == layout.folder else root / layout.folder


def _sources(layout: CifarLayout, folder: Path) -> list[Path]:
    return [folder / f for f in (layout.meta_file, *layout.train_files, *layout.test_files)]


def _missing(layout: CifarLayout, folder: Path) -> list[str]:
    return [p.name for p in _sources(layout, folder) if not p.is_file()]


def load_cifar_arrays(layout: CifarLayout, data_dir=None, download_ok: bool = True,
                      url: str | None = None, md5: str | None = None
                      ) -> dict[str, np.ndarray]:
    """Find the CIFAR files (downloading and unpacking what is missing) and parse them.

    Files already in the folder are used as they are and never replaced: the archive only
    adds the ones that are missing (see download.safe_extract).
    """
    root = cache_dir(data_dir)
    folder = find_folder(layout, root)
    missing = _missing(layout, folder)
    if missing:
        if not download_ok:
            raise FileNotFoundError(
                f"{layout.name}: {folder} lacks {missing} and download=False; download it "
                f"or point data_dir at an unpacked copy of {layout.folder}/.")
        url = url or layout.url
        archive = download(url, root / url.rsplit("/", 1)[-1], md5=md5 or layout.md5)
        extract_download(archive, folder, only=layout.folder)
        if missing := _missing(layout, folder):
            raise FileNotFoundError(f"{layout.name}: the archive {archive} did not contain "
                                    f"{[f'{layout.folder}/{m}' for m in missing]}")
    return _cached(layout, folder)


def _cached(layout: CifarLayout, folder: Path) -> dict[str, np.ndarray]:
    """The parsed arrays of ``folder``, from the .npz cache when it matches the files.

    The cache lives in the cache folder, named after the source folder's absolute path, and
    records a SHA-256 of every file: size and time would miss a file replaced by
    ``cp -p``. Hashing the 180 MB of CIFAR-10 takes ~0.15 s, parsing it several times more.
    """
    sources = _sources(layout, folder)
    fingerprint = f"v{CACHE_VERSION};" + ";".join(f"{p.name}:{_sha256(p)}" for p in sources)
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    cache_file = cache_dir() / "parsed" / f"{layout.folder}-{key}.npz"
    arrays = _read_cache(cache_file, fingerprint, _array_names(layout))
    if arrays is not None:
        return arrays
    arrays = parse_folder(layout, folder)
    try:
        _save_npz(cache_file, fingerprint=np.array(fingerprint), **arrays)
    except OSError as exc:  # a read-only cache only costs speed
        warnings.warn(f"could not write the CIFAR cache {cache_file}: {exc}", stacklevel=3)
    return arrays


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _array_names(layout: CifarLayout) -> set[str]:
    return {f"{split}_{key}" for split in ("train", "test")
            for key in ("images", *layout.label_keys)} | set(layout.label_keys.values())


def _read_cache(path: Path, fingerprint: str, names: set[str]) -> dict | None:
    """The arrays in ``path`` if it was written for exactly these files, else None.

    The cache is only a copy: one that is absent, stale, truncated or otherwise unreadable
    is parsed again (and rewritten), never trusted and never fatal.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["fingerprint"]) != fingerprint or not names <= set(npz.files):
                return None
            return {k: npz[k] for k in names}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        warnings.warn(f"ignoring the unreadable CIFAR cache {path} ({exc}); parsing the "
                      "batches again", stacklevel=4)
        return None


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
    meta_path = folder / layout.meta_file
    meta = _text_keys(meta_path, restricted_load(meta_path, max_file_bytes=META_MAX_BYTES))
    arrays = {}
    for split, files in (("train", layout.train_files), ("test", layout.test_files)):
        rows = layout.train_rows if split == "train" else layout.test_rows
        batches = [_read_batch(layout, folder / name, rows) for name in files]
        arrays[f"{split}_images"] = np.concatenate([b["data"] for b in batches])
        for key in layout.label_keys:
            arrays[f"{split}_{key}"] = np.concatenate([b[key] for b in batches])
    for names_key in layout.label_keys.values():
        names = meta.get(names_key)
        if not isinstance(names, list):
            raise CorruptDataError(f"{meta_path}: expected a list {names_key!r}; got "
                                   f"{type(names).__name__}. {REFETCH_HINT}")
        arrays[names_key] = np.array([_text(n) for n in names])
    return arrays


def _read_batch(layout: CifarLayout, path: Path, max_rows: int) -> dict[str, np.ndarray]:
    """One batch file: at most ``max_rows`` images (the official count), refused before
    unpickling if the file is larger than that many rows can be."""
    batch = _text_keys(path, restricted_load(
        path, max_bytes=max_rows * (ROW_BYTES + 8),
        max_file_bytes=max_rows * (ROW_BYTES + ROW_OVERHEAD) + (1 << 16)))
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != ROW_BYTES or len(data) > max_rows:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
        raise CorruptDataError(f"{path}: 'data' must be a uint8 array of shape (rows, "
                               f"{ROW_BYTES}) with at most {max_rows} rows; got {got}. "
                               f"{REFETCH_HINT}")
    out = {"data": data.reshape(-1, 3, 32, 32)}
    for key in layout.label_keys:
        out[key] = _labels(path, key, batch.get(key), len(data))
    return out


def _labels(path: Path, key: str, values, rows: int) -> np.ndarray:
    """``values`` as int64 labels, one per row: floats are refused, not truncated."""
    try:
        labels = np.asarray(values if values is not None else [])
    except (ValueError, TypeError) as exc:
        raise CorruptDataError(f"{path}: {key!r} is not a list of labels ({exc}). "
                               f"{REFETCH_HINT}") from None
    if labels.shape != (rows,) or (labels.size and labels.dtype.kind not in "iu"):
        raise CorruptDataError(f"{path}: expected {rows} integer {key!r}, got "
                               f"{labels.dtype} {labels.shape}. {REFETCH_HINT}")
    return labels.astype(np.int64)


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _text_keys(path: Path, mapping) -> dict:
    if not isinstance(mapping, dict):
        raise CorruptDataError(f"{path}: expected a CIFAR batch (a dict); got "
                               f"{type(mapping).__name__}. {REFETCH_HINT}")
    return {_text(k): v for k, v in mapping.items()}
