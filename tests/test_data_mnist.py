"""IDX parsing and the MNIST / Fashion-MNIST loaders, on small files the tests write."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from minivgg.data import DownloadError, load_dataset, load_fashion_mnist, load_mnist, mnist
from minivgg.data.mnist import SPLIT_FILES, read_idx

SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVGG_DATA", str(tmp_path / "cache"))


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    return header + np.array(array.shape, ">u4").tobytes() + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist_folder(folder: Path, n_train=7, n_test=3, gz=True, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8)}
    for key, stem in SPLIT_FILES.items():
        write_idx(folder / stem, arrays[key], gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_read_idx_round_trips_images_and_labels(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 1], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "img", images, gz)), images)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "lab", labels, gz)), labels)


def test_read_idx_handles_big_endian_types(tmp_path):
    values = np.array([[1, -2], [70000, 3]], dtype=">i4")
    out = read_idx(write_idx(tmp_path / "ints", values, gz=False))
    assert out.dtype == np.int32 and out.tolist() == values.tolist()
    floats = np.array([0.5, -1.25], dtype=">f4")
    assert read_idx(write_idx(tmp_path / "floats", floats, gz=True)).tolist() == [0.5, -1.25]


def test_read_idx_rejects_a_truncated_file(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10])
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(path)


def test_read_idx_rejects_a_file_that_is_not_idx(tmp_path):
    path = tmp_path / "text"
    path.write_text("hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_load_mnist_from_a_folder(tmp_path, gz):
    arrays = write_mnist_folder(tmp_path / "mnist", gz=gz)
    ds = load_mnist(tmp_path, download=False)
    assert ds.train_images.shape == (7, 1, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (3, 1, 28, 28)
    assert ds.train_labels.dtype == np.int64 and ds.classes == [str(d) for d in range(10)]
    np.testing.assert_array_equal(ds.train_images[:, 0], arrays["train_images"])
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])


def test_load_dataset_reads_fashion_mnist_from_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "FASHION_SYSTEM_DIR", tmp_path / "nowhere")
    write_mnist_folder(tmp_path / "fm", gz=False)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "fm", download=False)
    assert ds.name == "fashion-mnist" and ds.classes[9] == "Ankle boot"


def test_missing_files_without_download_name_what_was_expected(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "FASHION_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path / "empty", download=False)


def test_download_checks_md5_and_then_loads(tmp_path, monkeypatch):
    served = tmp_path / "served"
    write_mnist_folder(served, gz=True)
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    url = served.as_uri() + "/"  # urllib serves file:// URLs through the same code path

    monkeypatch.setattr(mnist, "MNIST_MD5", {name: "0" * 32 for name in sums})
    with pytest.raises(DownloadError, match="MD5"):
        load_mnist(tmp_path / "dl", url=url)
    assert not any(p.is_file() for p in (tmp_path / "dl").rglob("*"))

    monkeypatch.setattr(mnist, "MNIST_MD5", sums)
    ds = load_mnist(tmp_path / "dl", url=url)
    assert len(ds.train_labels) == 7
    assert sorted(p.name for p in (tmp_path / "dl" / "mnist").iterdir()) == sorted(sums)


@pytest.mark.skipif(not (SYSTEM / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_the_debian_package(tmp_path):
    ds = load_fashion_mnist(tmp_path / "empty", download=False)  # found in /usr/share
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
