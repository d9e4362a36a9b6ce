"""CIFAR loading: the real shared subset, downloads from a local server, and safety."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from minivgg.data import (
    DownloadError,
    UnsafeArchiveError,
    load_cifar10,
    load_cifar100,
    load_dataset,
)
from minivgg.data.download import safe_extract
from minivgg.data.safe_pickle import restricted_load, restricted_loads

SUBSET = Path(__file__).resolve().parents[2] / "shared/data/cifar10-subset"
needs_subset = pytest.mark.skipif(not (SUBSET / "cifar-10-batches-py").is_dir(),
                                  reason=f"the shared CIFAR-10 subset is not at {SUBSET}")
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
         "truck"]


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    """Every test caches into its own tmp folder, never into ~."""
    monkeypatch.setenv("MINIVGG_DATA", str(tmp_path / "cache"))


# --- the real subset -----------------------------------------------------------------------

@needs_subset
def test_shared_subset_loads_with_its_known_labels():
    ds = load_cifar10(SUBSET, download=False)
    assert ds.train_images.shape == (5085, 3, 32, 32) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (1017, 3, 32, 32)
    assert ds.train_labels.dtype == np.int64 and ds.test_labels.dtype == np.int64
    assert ds.train_labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert ds.test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert set(ds.train_labels.tolist()) == set(range(10)) == set(ds.test_labels.tolist())
    assert ds.classes == NAMES


@needs_subset
def test_data_dir_may_be_the_batches_folder_itself():
    ds = load_cifar10(SUBSET / "cifar-10-batches-py", download=False)
    assert len(ds.train_labels) == 5085


@needs_subset
def test_second_load_comes_from_the_npz_cache_in_under_a_second(tmp_path):
    first = load_cifar10(SUBSET, download=False)
    assert list((tmp_path / "cache" / "parsed").glob("*.npz")), "no cache file was written"
    start = time.perf_counter()
    second = load_cifar10(SUBSET, download=False)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"cached load took {elapsed:.2f} s"
    np.testing.assert_array_equal(first.train_images, second.train_images)
    np.testing.assert_array_equal(first.test_labels, second.test_labels)


# --- a small fake CIFAR-10 in the official layout --------------------------------------------

def write_fake_cifar10(folder: Path, rows: int = 6, seed: int = 0) -> None:
    """Write pickles with the official structure (bytes keys, uint8 data).

    Protocol 3, because Python 3 can only write bytes in protocol 2 through a
    _codecs.encode call, which the restricted unpickler rightly refuses.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    meta = {b"num_cases_per_batch": rows, b"label_names": [n.encode() for n in NAMES],
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=3))
    for name in BATCHES:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, rows).tolist(),
                 b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
                 b"filenames": [f"img{i}.png".encode() for i in range(rows)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=3))


def make_archive(tmp_path: Path) -> bytes:
    source = tmp_path / "source"
    write_fake_cifar10(source / "cifar-10-batches-py")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return buffer.getvalue()


def test_fake_folder_loads_and_rows_line_up(tmp_path):
    write_fake_cifar10(tmp_path / "data" / "cifar-10-batches-py", rows=4)
    ds = load_cifar10(tmp_path / "data", download=False)
    batch = pickle.loads((tmp_path / "data/cifar-10-batches-py/data_batch_2").read_bytes())
    np.testing.assert_array_equal(ds.train_images[4:8].reshape(4, -1), batch[b"data"])
    assert ds.train_labels[4:8].tolist() == batch[b"labels"]
    assert len(ds.train_labels) == 20 and len(ds.test_labels) == 4


def test_cifar100_gives_fine_or_coarse_labels(tmp_path):
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=3))
    for name, rows in (("train", 9), ("test", 4)):
        batch = {b"fine_labels": rng.integers(0, 100, rows).tolist(),
                 b"coarse_labels": rng.integers(0, 20, rows).tolist(),
                 b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=3))
    fine = load_cifar100(tmp_path / "data", download=False)
    coarse = load_dataset("cifar100", tmp_path / "data", download=False, label_mode="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert fine.train_images.shape == (9, 3, 32, 32) and coarse.test_images.shape[0] == 4
    assert fine.train_labels.tolist() == batch_labels(folder / "train", b"fine_labels")
    assert coarse.train_labels.tolist() == batch_labels(folder / "train", b"coarse_labels")


def batch_labels(path: Path, key: bytes) -> list[int]:
    return pickle.loads(path.read_bytes())[key]


def test_missing_data_without_download_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_cifar10(tmp_path / "empty", download=False)


# --- downloads from a local HTTP server -------------------------------------------------------

class Server:
    """http.server on 127.0.0.1 (ephemeral port) serving one archive.

    ``cut_next`` makes the next response announce the full Content-Length but send only
    half of the body before closing the connection.
    """

    def __init__(self, body: bytes):
        self.body, self.cut_next, self.requests = body, False, 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 5  # a stuck client cannot hold the server

            def do_GET(self):
                owner.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                if owner.cut_next:
                    owner.cut_next = False
                    self.wfile.write(owner.body[: len(owner.body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(owner.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}/"     # any path serves body
        self.url = self.base + "cifar-10-python.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def leftovers(folder: Path) -> list[str]:
    """Files (not folders) under ``folder``, ignoring the parsed-array cache."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and "parsed" not in p.parts)


def test_download_with_right_md5_loads(tmp_path):
    body = make_archive(tmp_path)
    with Server(body) as server:
        ds = load_cifar10(tmp_path / "dl", url=server.url, md5=hashlib.md5(body).hexdigest())
    assert ds.train_images.shape == (30, 3, 32, 32) and ds.classes == NAMES
    assert (tmp_path / "dl" / "cifar-10-batches-py" / "test_batch").is_file()


def test_download_with_wrong_md5_fails_clearly_and_keeps_nothing(tmp_path):
    with Server(make_archive(tmp_path)) as server:
        with pytest.raises(DownloadError, match="MD5") as info:
            load_cifar10(tmp_path / "dl", url=server.url, md5="0" * 32)
    assert server.url in str(info.value)
    assert leftovers(tmp_path / "dl") == []


def test_download_cut_off_mid_transfer_keeps_nothing_and_a_retry_succeeds(tmp_path):
    body = make_archive(tmp_path)
    md5 = hashlib.md5(body).hexdigest()
    with Server(body) as server:
        server.cut_next = True
        with pytest.raises(DownloadError, match="cut off") as info:
            load_cifar10(tmp_path / "dl", url=server.url, md5=md5)
        assert server.url in str(info.value)
        assert leftovers(tmp_path / "dl") == []
        ds = load_cifar10(tmp_path / "dl", url=server.url, md5=md5)
    assert len(ds.train_labels) == 30 and server.requests == 2


def test_offline_failure_is_fast_and_names_data_dir_and_shapes(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(DownloadError) as info:
        load_dataset("cifar10", data_dir=tmp_path / "dl", url=f"http://127.0.0.1:{port}/c.tgz")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "--data-dir" in message and "shapes" in message and str(port) in message


# --- nothing in a data file may run code -----------------------------------------------------

def _write_marker(path):  # what a hostile pickle would call; harmless here
    Path(path).write_text("ran")


class Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (str(self.marker),))


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    payload = pickle.dumps({b"data": Hostile(marker)}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        restricted_loads(payload)
    assert not marker.exists()
    pickle.loads(payload)  # the control: a plain unpickler does run it
    assert marker.exists()


def test_os_system_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        restricted_loads(payload)
    assert not marker.exists()


def test_object_arrays_are_refused():
    payload = pickle.dumps(np.array([1, 2], dtype=object), protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="object"):
        restricted_loads(payload)


def test_hostile_batch_in_a_folder_stops_the_load(tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    write_fake_cifar10(folder)
    marker = tmp_path / "marker"
    (folder / "data_batch_3").write_bytes(pickle.dumps(Hostile(marker), protocol=3))
    with pytest.raises(pickle.UnpicklingError):
        load_cifar10(tmp_path / "data", download=False)
    assert not marker.exists()


@needs_subset
def test_restricted_unpickler_reads_the_real_files():
    batch = restricted_load(SUBSET / "cifar-10-batches-py" / "test_batch")
    assert batch[b"data"].shape == (1017, 3072)


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        ok = tarfile.TarInfo("cifar-10-batches-py/readme")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    return path


def _link(name, target, kind):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("member", [
    tarfile.TarInfo("../escaped"),
    tarfile.TarInfo("cifar-10-batches-py/../../escaped"),
    tarfile.TarInfo("/tmp/minivgg-absolute-escaped"),
    _link("cifar-10-batches-py/link", "/etc/passwd", tarfile.SYMTYPE),
    _link("cifar-10-batches-py/hard", "/etc/passwd", tarfile.LNKTYPE),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink"])
def test_unsafe_archive_members_are_refused_before_anything_is_written(tmp_path, member):
    archive = _tar_with(tmp_path, member)
    dest = tmp_path / "out" / "inner"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, dest)
    assert not (tmp_path / "out" / "escaped").exists()
    assert not Path("/tmp/minivgg-absolute-escaped").exists()
    assert os.listdir(dest) == []
