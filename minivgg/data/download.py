"""Fetching and unpacking data files safely.

Three promises, because a half-written or hostile file must never look like data:

* a download is written to a temporary file beside its destination and renamed into place
  only once it is complete and its MD5 matches, so an interrupted or corrupt transfer
  leaves nothing behind;
* every failure raises ``DownloadError`` naming the URL, what went wrong, and what to do
  when offline;
* an archive is checked member by member before anything is written: absolute paths,
  ``..`` components, links and device files are refused.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm import tqdm

DEFAULT_CACHE = Path("~/.cache/minivgg")
TIMEOUT_S = 10.0  # seconds without a byte before a download gives up (offline: fail fast)

OFFLINE_HINT = ("If this machine is offline, point --data-dir (or the MINIVGG_DATA variable) "
                "at an existing copy, or use the offline synthetic data set 'shapes', which "
                "needs no download.")


class DownloadError(RuntimeError):
    """A download failed; nothing partial was left at the destination."""


class UnsafeArchiveError(RuntimeError):
    """An archive holds a member that could write outside its folder."""


def cache_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder data lives in: ``data_dir`` if given, else $MINIVGG_DATA, else
    ~/.cache/minivgg."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("MINIVGG_DATA")
    return Path(env).expanduser() if env else DEFAULT_CACHE.expanduser()


def file_md5(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | os.PathLike, md5: str | None = None,
             timeout: float = TIMEOUT_S, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (a file path) and return ``dest``.

    An existing ``dest`` with the right MD5 is reused. The bytes go to a temporary file in
    the same folder, hashed as they arrive; only a complete transfer with the expected MD5
    is renamed to ``dest`` (a rename within a folder is atomic).
    """
    dest = Path(dest)
    if dest.exists() and (md5 is None or file_md5(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(url, out, timeout, progress)
        if md5 is not None and digest != md5:
            raise DownloadError(f"Download of {url} is corrupt: its MD5 is {digest}, expected "
                                f"{md5}. The file was deleted; try again.")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # no-op after a successful rename
    return dest


def _fetch(url: str, out, timeout: float, progress: bool) -> str:
    """Stream ``url`` into the open file ``out``; return the MD5 of what was received."""
    digest = hashlib.md5()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            with tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                      desc=url.rsplit("/", 1)[-1], leave=False) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except http.client.IncompleteRead as exc:
        raise DownloadError(f"Download of {url} was cut off after {received + len(exc.partial)}"
                            f" bytes ({exc}). Nothing was kept; try again. {OFFLINE_HINT}"
                            ) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"Could not download {url}: {reason}. Nothing was kept. "
                            f"{OFFLINE_HINT}") from exc
    if total is not None and received != total:
        raise DownloadError(f"Download of {url} was cut off: got {received} of {total} bytes. "
                            f"Nothing was kept; try again. {OFFLINE_HINT}")
    return digest.hexdigest()


def check_member(member: tarfile.TarInfo) -> None:
    """Raise UnsafeArchiveError unless ``member`` is a plain file or folder inside the
    archive's root (no absolute path, no "..", no symlink or hardlink, no device)."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")):
        raise UnsafeArchiveError(f"archive member {member.name!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"archive member {member.name!r} climbs out with '..'")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"archive member {member.name!r} is a link to "
                                 f"{member.linkname!r}; links are not extracted")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive member {member.name!r} is not a regular file or "
                                 "folder")


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a tar archive into ``dest`` after checking every member.

    The archive is unpacked into a temporary folder inside ``dest`` first and its top-level
    entries are then renamed into place, so a failure halfway leaves no half-filled folder.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            check_member(member)
        staging = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
        try:
            if hasattr(tarfile, "data_filter"):  # Python ≥ 3.12 (and patched 3.8+): belt and braces
                tar.extractall(staging, members=members, filter="data")
            else:
                tar.extractall(staging, members=members)
            for entry in staging.iterdir():
                target = dest / entry.name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                os.replace(entry, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest
