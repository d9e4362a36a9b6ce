"""Hostile and damaged data files (issue 13): each is refused with one message that names
the file, says what is wrong and what to do; nothing is written and nothing is deleted
that the package did not create (a bad download excepted, which is deleted as it says)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_data_cifar import Server, leftovers, make_archive, write_fake_cifar10
from test_data_images import png_bytes, png_header
from test_data_mnist import idx_bytes, write_mnist_folder

from minivgg.data import (
    CorruptDataError,
    DataLoader,
    Dataset,
    DownloadError,
    ImageError,
    UnsafeArchiveError,
    cifar,
    load_cifar10,
    load_mnist,
    read_image,
)
from minivgg.data.download import safe_extract
from minivgg.data.mnist import read_idx
from minivgg.data.safe_pickle import _np_reconstruct

MB = 1 << 20


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVGG_DATA", str(tmp_path / "cache"))


def peak_bytes(fn) -> int:
    """Peak Python/NumPy allocation while ``fn()`` runs (it is expected to raise)."""
    tracemalloc.start()
    try:
        fn()
    except Exception:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# --- CIFAR batches: code, bombs, damage ----------------------------------------------------

class Call:
    """Pickles as the call ``fn(*args)``: how a file asks the unpickler to do work."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def fake_batch(rows=6, **change) -> bytes:
    batch = {b"batch_label": b"x", b"labels": [1] * rows,
             b"data": np.zeros((rows, 3072), np.uint8)}
    batch.update({k.encode(): v for k, v in change.items()})
    return pickle.dumps(batch, protocol=3)


def object_flag_dtype() -> bytes:
    """An array whose dtype's BUILD state sets the has-object flags (63) on uint8."""
    data = pickle.dumps({b"data": np.zeros(4, np.uint8)}, protocol=3)
    flags = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
    assert flags in data
    return data.replace(flags, flags.replace(b"K\x00t", b"K?t"))


BATCH_CASES = {  # name: (the file's bytes, what the message must say)
    "ndarray-call-bomb": (pickle.dumps({b"data": Call(np.ndarray, (300_000, 3072), "u1")}, 3),
                          "refusing to call numpy.ndarray"),
    "reconstruct-bomb": (pickle.dumps(
        {b"data": Call(_np_reconstruct, np.ndarray, (300_000, 3072), b"B")}, 3),
        "921600000 bytes.* larger than the"),
    "bytes8-length-bomb": (b"\x80\x04\x8e" + struct.pack("<Q", 60 << 30) + b"abc.",
                           "damaged.*expected 64424509440 bytes"),
    "truncated": (fake_batch()[:9000], "damaged or not a pickle"),
    "garbage": (np.random.default_rng(0).bytes(5000), "damaged or not a pickle"),
    "empty": (b"", "damaged or not a pickle"),
    "stray-bytes-after-stop": (fake_batch() + b"\x00junk", "5 stray bytes"),
    "not-a-dict": (pickle.dumps([1, 2, 3], protocol=3), "expected a CIFAR batch"),
    "float-labels": (fake_batch(labels=[1.7] * 6), "expected 6 integer 'labels', got float"),
    "too-few-labels": (fake_batch(labels=[1, 2]), "expected 6 integer 'labels'"),
    "int16-data": (fake_batch(data=np.zeros((6, 3072), np.int16)), "got int16"),
    "object-flagged-dtype": (object_flag_dtype(), "claims to hold\\) Python objects"),
    "os-system": (b"cos\nsystem\n(S'true'\ntR.", "refusing to load global os.system"),
}


@pytest.mark.parametrize("payload, match", BATCH_CASES.values(), ids=BATCH_CASES.keys())
def test_hostile_or_damaged_batch_is_refused_naming_the_file(tmp_path, payload, match):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    write_fake_cifar10(folder)
    bad = folder / "data_batch_1"
    bad.write_bytes(payload)
    before = files_of(folder)
    peak = peak_bytes(lambda: load_cifar10(tmp_path / "data", download=False))
    with pytest.raises(CorruptDataError, match=match) as info:
        load_cifar10(tmp_path / "data", download=False)
    message = str(info.value)
    assert str(bad) in message and "Delete it" in message and "\n" not in message
    assert peak < 16 * MB, f"{peak / MB:.0f} MB allocated before the refusal"
    assert files_of(folder) == before and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name, size", [("data_batch_1", 40_000_000),
                                        ("batches.meta", 2 * MB)])
def test_a_file_larger_than_the_format_allows_is_refused_unread(tmp_path, name, size):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar10(folder)
    with open(folder / name, "r+b") as f:
        f.truncate(size)  # sparse: costs no disk
    with pytest.raises(CorruptDataError, match=f"{name} is {size} bytes, more than"):
        load_cifar10(folder, download=False)


def test_a_batch_with_more_rows_than_the_official_count_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "CIFAR10", replace(cifar.CIFAR10, train_rows=5))
    write_fake_cifar10(tmp_path / "cifar-10-batches-py", rows=6)
    with pytest.raises(CorruptDataError, match="data_batch_1: 'data' .* at most 5 rows"):
        load_cifar10(tmp_path, download=False)


# --- the parse cache -----------------------------------------------------------------------

def test_a_batch_replaced_with_the_same_size_and_mtime_is_parsed_again(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar10(folder, seed=0)
    old = load_cifar10(folder, download=False)
    batch = folder / "data_batch_1"
    stat = batch.stat()
    write_fake_cifar10(tmp_path / "other" / "cifar-10-batches-py", seed=1)
    batch.write_bytes((tmp_path / "other/cifar-10-batches-py/data_batch_1").read_bytes())
    os.utime(batch, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what `cp -p` does
    assert batch.stat().st_size == stat.st_size and batch.stat().st_mtime_ns == stat.st_mtime_ns
    new = load_cifar10(folder, download=False)
    rows = pickle.loads(batch.read_bytes())[b"data"]
    np.testing.assert_array_equal(new.train_images[:6].reshape(6, -1), rows)
    assert not np.array_equal(new.train_images[:6], old.train_images[:6])


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a zip" * 50,
                      "empty": b""}[how])


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_a_damaged_cache_is_parsed_again_and_healed(tmp_path, how):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar10(folder)
    first = load_cifar10(folder, download=False)
    (cache_file,) = (tmp_path / "cache" / "parsed").glob("*.npz")
    damage(cache_file, how)
    with pytest.warns(UserWarning, match="unreadable CIFAR cache"):
        second = load_cifar10(folder, download=False)
    np.testing.assert_array_equal(first.train_images, second.train_images)
    with np.load(cache_file) as npz:  # rewritten whole
        assert "train_images" in npz.files


def test_a_cache_write_that_fails_halfway_leaves_no_file(tmp_path, monkeypatch):
    def half_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 half")
        raise OSError("disk full")

    write_fake_cifar10(tmp_path / "cifar-10-batches-py")
    monkeypatch.setattr(cifar.np, "savez", half_then_fail)
    with pytest.warns(UserWarning, match="could not write the CIFAR cache"):
        load_cifar10(tmp_path, download=False)
    assert list((tmp_path / "cache" / "parsed").iterdir()) == []


# --- archives and downloads ----------------------------------------------------------------

def test_a_users_folder_is_filled_in_never_replaced_or_deleted(tmp_path):
    """The old code deleted a cifar-10-batches-py/ that lacked batches.meta, notes and all."""
    body = make_archive(tmp_path)
    folder = tmp_path / "dl" / "cifar-10-batches-py"
    write_fake_cifar10(folder, seed=7)
    (folder / "batches.meta").unlink()
    (folder / "my-notes.txt").write_text("mine")
    before = files_of(folder)
    with Server(body) as server:
        ds = load_cifar10(tmp_path / "dl", url=server.url, md5=hashlib.md5(body).hexdigest())
    after = files_of(folder)
    assert {k: after[k] for k in before} == before and "batches.meta" in after
    assert not list(folder.glob(".extract-*")) and len(ds.train_labels) == 30


def tar_bytes(files: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_safe_extract_keeps_an_existing_file_of_the_same_name(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(tar_bytes({"top/readme": b"theirs", "top/new": b"new"}))
    (tmp_path / "out" / "top").mkdir(parents=True)
    (tmp_path / "out" / "top" / "readme").write_bytes(b"mine")
    safe_extract(archive, tmp_path / "out")
    assert files_of(tmp_path / "out") == {"top/new": b"new", "top/readme": b"mine"}


@pytest.mark.parametrize("limit", [{"max_members": 3}, {"max_bytes": 100}])
def test_an_archive_too_large_to_be_data_is_refused_before_writing(tmp_path, limit):
    archive = tmp_path / "many.tar"
    archive.write_bytes(tar_bytes({f"top/f{i}": b"x" * 50 for i in range(5)}))
    with pytest.raises(UnsafeArchiveError, match="many.tar holds more than"):
        safe_extract(archive, tmp_path / "out", **limit)
    assert os.listdir(tmp_path / "out") == []


def test_a_wrong_md5_archive_at_the_destination_is_really_deleted(tmp_path):
    stale = tmp_path / "dl" / "cifar-10-python.tar.gz"
    stale.parent.mkdir()
    stale.write_bytes(b"an old, broken download")
    with Server(make_archive(tmp_path)) as server:
        with pytest.raises(DownloadError, match="The file was deleted.*earlier") as info:
            load_cifar10(tmp_path / "dl", url=server.url, md5="0" * 32)
    assert str(stale) in str(info.value) and not stale.exists()
    assert leftovers(tmp_path / "dl") == []


@pytest.mark.parametrize("body, error, match", [
    (tar_bytes({"cifar-10-batches-py/../../escaped": b"x"}, "w:gz"), UnsafeArchiveError,
     "climbs out"),
    (b"\x1f\x8b" + b"not really gzip" * 10, CorruptDataError, "cannot be unpacked"),
], ids=["unsafe", "corrupt"])
def test_a_refused_download_is_deleted(tmp_path, body, error, match):
    with Server(body) as server:
        with pytest.raises(error, match=match) as info:
            load_cifar10(tmp_path / "dl", url=server.url, md5=hashlib.md5(body).hexdigest())
    assert "cifar-10-python.tar.gz" in str(info.value) and "deleted" in str(info.value)
    assert leftovers(tmp_path / "dl") == [] and not (tmp_path / "escaped").exists()


# --- IDX files -----------------------------------------------------------------------------

IMAGES = idx_bytes(np.zeros((4, 28, 28), np.uint8))
IDX_CASES = {
    "truncated-gz": (gzip.compress(IMAGES)[:-30], "is truncated"),
    "gz-bomb": (gzip.compress(idx_bytes(np.zeros((2, 2), np.uint8)) + bytes(32 * MB)),
                "holds more"),
    "huge-header": (b"\x00\x00\x08\x03" + struct.pack(">III", 2**31, 28, 28) + b"0" * 10,
                    "more than the"),
    "short-gz": (gzip.compress(IMAGES[:-100]), "header says shape"),
    "raw-too-long": (IMAGES + b"extra", "holds more"),
    "gz-damaged-inside": (gzip.compress(IMAGES)[:20] + b"\xff" * 40
                          + gzip.compress(IMAGES)[60:], "is damaged"),
    "gz-of-text": (gzip.compress(b"hello world"), "not an IDX file"),
    "header-cut": (b"\x00\x00\x08\x03\x00\x00", "header says 3 dimensions"),
}


@pytest.mark.parametrize("data, match", IDX_CASES.values(), ids=IDX_CASES.keys())
def test_damaged_idx_is_refused_naming_the_file(tmp_path, data, match):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(data)
    assert peak_bytes(lambda: read_idx(path)) < 8 * MB
    with pytest.raises(CorruptDataError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value) and "Delete it" in str(info.value)
    assert path.read_bytes() == data


def test_float_labels_in_an_idx_file_are_refused(tmp_path):
    write_mnist_folder(tmp_path / "mnist", gz=False)
    labels = np.array([0.5, 1.7, 2, 3, 4, 5, 6], ">f4")
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(
        bytes([0, 0, 0x0D, 1]) + np.array([7], ">u4").tobytes() + labels.tobytes())
    with pytest.raises(CorruptDataError, match="train-labels-idx1-ubyte must hold integer"):
        load_mnist(tmp_path, download=False)


# --- labels and limits ---------------------------------------------------------------------

@pytest.mark.parametrize("labels, kw", [
    ([0.0, 1.7, 2.0], {}), ([0.0, 1.0, 2.0], {}), ([-1, 0, 1], {}),
    ([0, 1, 10], {"num_classes": 10}), ([True, False, True], {}), (["a", "b", "c"], {}),
    (np.array([0, 1, 2**63], np.uint64), {}),
], ids=["fractional", "whole-floats", "negative", "out-of-range", "bool", "str", "uint64"])
def test_dataloader_refuses_labels_that_are_not_class_indices(labels, kw):
    images = np.zeros((3, 1, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="DataLoader: labels must"):
        DataLoader(images, np.asarray(labels), batch_size=2, **kw)
    assert len(DataLoader(images, [0, 1, 9], batch_size=2, num_classes=10)) == 2


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "3"])
def test_dataset_take_refuses_a_limit_that_is_not_a_positive_count(limit):
    ds = Dataset("t", np.zeros((4, 1, 2, 2), np.uint8), np.zeros(4, np.int64),
                 np.zeros((3, 1, 2, 2), np.uint8), np.zeros(3, np.int64), ["a"])
    with pytest.raises(ValueError, match="Dataset.take: limit must be"):
        ds.take(limit)
    assert len(ds.take(2).train_labels) == 2 and len(ds.take(4).test_labels) == 3


# --- pictures ------------------------------------------------------------------------------

IMAGE_CASES = {
    "text": (b"hello, I am not a picture", "is not a picture"),
    "empty": (b"", "is not a picture"),
    "header-bomb-12000": (png_header(12000, 12000), "12000×12000 = 144,000,000 pixels"),
    "truncated-png": (png_bytes()[:3000], "damaged or truncated"),
    "tiff": (png_bytes(4, "TIFF"), "is not a picture this reader opens"),
}


@pytest.mark.parametrize("data, match", IMAGE_CASES.values(), ids=IMAGE_CASES.keys())
def test_read_image_refuses_what_is_not_a_usable_picture(tmp_path, data, match):
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=match) as info:
        read_image(path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def test_read_image_names_a_missing_file_and_honours_max_pixels(tmp_path):
    with pytest.raises(ImageError, match="cannot read .*nowhere.png"):
        read_image(tmp_path / "nowhere.png")
    (tmp_path / "big.png").write_bytes(png_bytes(64))
    with pytest.raises(ImageError, match="64×64 = 4,096 pixels, more than the 1,000"):
        read_image(tmp_path / "big.png", max_pixels=1000)
