"""MNIST and Fashion-MNIST from IDX files.

IDX is a tiny binary format: two zero bytes, a type code, the number of dimensions, one
big-endian uint32 per dimension, then the values in C order. The four files of each data
set are found in a folder (gzipped or not), else downloaded. Fashion-MNIST is also found
where Debian's ``dataset-fashion-mnist`` package installs it.
"""

from __future__ import annotations

import gzip
import zlib
from math import prod
from pathlib import Path

import numpy as np

from minivgg.data.dataset import REFETCH_HINT, CorruptDataError, Dataset
from minivgg.data.download import cache_dir, download

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
              0x0E: ">f8"}

SPLIT_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # LeCun's site refuses bots
MNIST_MD5 = {  # not published with the data; the sums every mirror (and torchvision) uses
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_CLASSES = [str(d) for d in range(10)]

FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MD5 = {  # published in the Fashion-MNIST README
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist


MAX_IDX_BYTES = 1 << 30  # the largest real IDX file (MNIST train images) is 47 MB


def read_idx(path, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read one IDX file (gzipped or raw, told apart by its first bytes) into an array.

    The header says exactly how many bytes follow, so a gzipped file is inflated chunk by
    chunk and only up to one byte past that: a small .gz that inflates to gigabytes is
    refused after reading what the header promised, and a header promising more than
    ``max_bytes`` is refused before any of it is read. Every damaged file raises
    CorruptDataError naming it.
    """
    path = Path(path)
    try:
        with _open_idx(path) as f:
            dtype, shape = _idx_header(path, f)
            size = prod(shape) * dtype.itemsize
            if size > max_bytes:
                raise CorruptDataError(f"{path}: header says shape {shape} ({size} bytes of "
                                       f"values), more than the {max_bytes} allowed. "
                                       f"{REFETCH_HINT}")
            body = _read_at_most(f, size + 1)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        what = "is truncated" if isinstance(exc, EOFError) else "is damaged"
        raise CorruptDataError(f"{path} {what}: its gzip stream cannot be read to the end "
                               f"({type(exc).__name__}: {exc}). {REFETCH_HINT}") from None
    if len(body) != size:
        header = 4 + 4 * len(shape)
        held = f"{header + len(body)} bytes" if len(body) <= size else "more"
        raise CorruptDataError(f"{path}: header says shape {shape} ({header + size} bytes "
                               f"in all), but the file holds {held}. {REFETCH_HINT}")
    return np.frombuffer(body, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _open_idx(path: Path):
    """The file's bytes as a stream: through gzip if it starts with gzip's magic number."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _idx_header(path: Path, f) -> tuple[np.dtype, tuple[int, ...]]:
    """Read the magic bytes and the dimensions; return the value type and the shape."""
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] not in IDX_DTYPES:
        raise CorruptDataError(
            f"{path} is not an IDX file: it starts with {magic!r}, expected two zero bytes, "
            f"a type code in {sorted(IDX_DTYPES)} and a dimension count. {REFETCH_HINT}")
    dims = f.read(4 * magic[3])
    if len(dims) != 4 * magic[3]:
        raise CorruptDataError(f"{path}: header says {magic[3]} dimensions, but the file "
                               f"ends after {4 + len(dims)} bytes. {REFETCH_HINT}")
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
    return np.dtype(IDX_DTYPES[magic[2]]), shape


def _read_at_most(f, limit: int, chunk: int = 1 << 20) -> bytes:
    """Up to ``limit`` bytes from ``f``, read in chunks so memory follows what is there."""
    parts, got = [], 0
    while got < limit and (part := f.read(min(chunk, limit - got))):
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """``stem`` in ``folder``, gzipped or not, also in the "train-images.idx3-ubyte" spelling."""
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


def load_idx_dataset(name: str, folders, classes, download_ok=True, url=None, md5=None,
                     download_to: Path | None = None) -> Dataset:
    """Load the four IDX files from the first folder that has them all, else download them
    into ``download_to`` (from ``url`` + file name, checked against ``md5``)."""
    folders = [Path(f) for f in folders]
    for folder in folders:
        paths = {key: find_idx_file(folder, stem) for key, stem in SPLIT_FILES.items()}
        if all(paths.values()):
            break
    else:
        if not download_ok or url is None:
            raise FileNotFoundError(
                f"{name}: no folder among {[str(f) for f in folders]} holds the four files "
                f"{list(SPLIT_FILES.values())} (optionally .gz), and download=False")
        paths = {}
        for key, stem in SPLIT_FILES.items():
            filename = f"{stem}.gz"
            paths[key] = download(url + filename, download_to / filename,
                                  md5=(md5 or {}).get(filename))
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images = arrays[f"{split}_images"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise CorruptDataError(f"{name}: {paths[f'{split}_images']} must hold uint8 "
                                   f"images (N, H, W); got {images.dtype} {images.shape}. "
                                   f"{REFETCH_HINT}")
        labels = arrays[f"{split}_labels"]
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise CorruptDataError(f"{name}: {paths[f'{split}_labels']} must hold integer "
                                   f"labels (N,); got {labels.dtype} {labels.shape}. "
                                   f"{REFETCH_HINT}")
        arrays[f"{split}_images"] = images[:, None, :, :]  # add the channel axis: NCHW
        arrays[f"{split}_labels"] = labels.astype(np.int64)
    return Dataset(name=name, classes=list(classes), **arrays)


def load_mnist(data_dir=None, download: bool = True, url: str | None = None) -> Dataset:
    """MNIST digits: 60,000 train and 10,000 test images, uint8 (N, 1, 28, 28).

    ``data_dir`` may hold the four files or a ``mnist/`` folder with them.
    """
    root = cache_dir(data_dir)
    return load_idx_dataset("mnist", [root / "mnist", root], MNIST_CLASSES, download,
                            url or MNIST_URL, MNIST_MD5, root / "mnist")


def load_fashion_mnist(data_dir=None, download: bool = True, url: str | None = None) -> Dataset:
    """Fashion-MNIST: 60,000 train and 10,000 test images, uint8 (N, 1, 28, 28).

    Looked for in ``data_dir`` (or its ``fashion-mnist/`` folder), then in
    /usr/share/datasets/fashion-mnist, and downloaded only if neither has it.
    """
    root = cache_dir(data_dir)
    return load_idx_dataset("fashion-mnist", [root / "fashion-mnist", root, FASHION_SYSTEM_DIR],
                            FASHION_CLASSES, download, url or FASHION_URL, FASHION_MD5,
                            root / "fashion-mnist")
