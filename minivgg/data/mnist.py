"""MNIST and Fashion-MNIST from IDX files.

IDX is a tiny binary format: two zero bytes, a type code, the number of dimensions, one
big-endian uint32 per dimension, then the values in C order. The four files of each data
set are found in a folder (gzipped or not), else downloaded. Fashion-MNIST is also found
where Debian's ``dataset-fashion-mnist`` package installs it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from minivgg.data.dataset import Dataset
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


def read_idx(path) -> np.ndarray:
    """Read one IDX file (gzipped or raw, told apart by its first bytes) into an array."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":  # the gzip magic number
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: it starts with {data[:4]!r}, expected "
                         "two zero bytes, a type code in " + str(sorted(IDX_DTYPES)) +
                         " and a dimension count")
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes in all), but "
                         f"the file holds {len(data)} bytes")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


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
            raise ValueError(f"{name}: {paths[f'{split}_images']} must hold uint8 images "
                             f"(N, H, W); got {images.dtype} {images.shape}")
        arrays[f"{split}_images"] = images[:, None, :, :]  # add the channel axis: NCHW
        arrays[f"{split}_labels"] = arrays[f"{split}_labels"].astype(np.int64)
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
