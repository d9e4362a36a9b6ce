"""Fetching and unpacking data files safely.

Four promises, because a half-written or hostile file must never look like data:

* a download is written to a temporary file beside its destination and renamed into place
  only once it is complete and its MD5 matches, so an interrupted or corrupt transfer
  leaves nothing behind;
* every failure raises ``DownloadError`` naming the URL, what went wrong, and what to do
  when offline;
* an archive is checked member by member before anything is written: absolute paths,
  ``..`` components, links, device files and archives too large to be data are refused;
* unpacking only adds: it never replaces or deletes a file or folder it did not create,
  so a user's folder of the same name keeps everything it had. What is deleted is only
  what this module downloaded and found bad (a wrong MD5, a refused or unreadable archive).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from minivgg.data.dataset import CorruptDataError

DEFAULT_CACHE = Path("~/.cache/minivgg")
MAX_MEMBERS = 10_000          # CIFAR's archives hold under 10
MAX_ARCHIVE_BYTES = 1 << 30   # CIFAR-10 unpacks to 178 MB, CIFAR-100 to 161 MB
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

    An existing ``dest`` with the right MD5 is reused; one with the wrong MD5 (an older,
    damaged download) is deleted first, so it cannot be mistaken for data on a later run.
    The bytes go to a temporary file in the same folder, hashed as they arrive; only a
    complete transfer with the expected MD5 is renamed to ``dest`` (a rename within a folder
    is atomic).
    """
    dest = Path(dest)
    stale = _remove_stale(dest, md5)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(url, out, timeout, progress)
        if md5 is not None and digest != md5:
            raise DownloadError(f"Download of {url} is corrupt: its MD5 is {digest}, expected "
                                f"{md5}. The file was deleted; try again.{stale}")
        os.replace(tmp, dest)
    except DownloadError as exc:
        if stale and stale not in str(exc):
            raise DownloadError(f"{exc}{stale}") from exc.__cause__
        raise
    finally:
        tmp.unlink(missing_ok=True)  # no-op after a successful rename
    return dest


def _remove_stale(dest: Path, md5: str | None) -> str:
    """Delete ``dest`` if it exists with an MD5 other than ``md5``; return a sentence saying
    so for an error message ("" when nothing was deleted)."""
    if md5 is None or not dest.is_file():
        return ""
    digest = file_md5(dest)
    if digest == md5:
        return ""
    dest.unlink()
    return (f" The earlier {dest}, whose MD5 was {digest} instead of {md5}, was deleted "
            "too.")


def _fetch(url: str, out, timeout: float, progress: bool) -> str:
    """Stream ``url`` into the open file ``out``; return the MD5 of what was received."""
    from tqdm import tqdm  # imported when a download happens, not at every start-up

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


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, only: str | None = None,
                 max_members: int = MAX_MEMBERS, max_bytes: int = MAX_ARCHIVE_BYTES) -> Path:
    """Unpack a tar archive into ``dest`` after checking every member; return ``dest``.

    ``only`` names one top-level folder of the archive whose contents are unpacked into
    ``dest`` itself (the rest is skipped). Nothing that is already there is replaced or
    deleted: the archive is unpacked into a fresh temporary folder inside ``dest`` and only
    the files and folders ``dest`` lacks are moved in, so a user's folder keeps every file
    it had. A refused archive (unsafe member, too many members, too many bytes) writes
    nothing into ``dest`` (which is created, empty, if it did not exist).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        members = _checked_members(tar, archive, only, max_members, max_bytes)
        staging = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
        try:
            if hasattr(tarfile, "data_filter"):  # Python ≥ 3.12 (and patched 3.8+): belt and braces
                tar.extractall(staging, members=members, filter="data")
            else:
                tar.extractall(staging, members=members)
            _merge(staging / only if only else staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # only our own temporary folder
    return dest


def _checked_members(tar: tarfile.TarFile, archive: Path, only: str | None,
                     max_members: int, max_bytes: int) -> list[tarfile.TarInfo]:
    """The members to unpack (those under ``only``, if given), each checked, read one
    header at a time so a hostile archive is refused before it fills memory or disk."""
    members, total = [], 0
    for count, member in enumerate(tar, start=1):
        try:
            check_member(member)
        except UnsafeArchiveError as exc:
            raise UnsafeArchiveError(f"{archive}: {exc}; nothing was extracted") from None
        total += member.size
        if count > max_members or total > max_bytes:
            raise UnsafeArchiveError(
                f"{archive} holds more than {max_members} members or {max_bytes} bytes "
                f"(reached {count} members, {total} bytes); nothing was extracted")
        if only is None or PurePosixPath(member.name).parts[:1] == (only,):
            members.append(member)
    return members


def _merge(source: Path, dest: Path) -> None:
    """Move into ``dest`` what ``source`` has and ``dest`` lacks; descend into folders both
    have. An existing file, link or folder in ``dest`` is never replaced."""
    if not source.is_dir():
        return
    for entry in sorted(source.iterdir()):
        target = dest / entry.name
        if not os.path.lexists(target):
            os.replace(entry, target)
        elif entry.is_dir() and target.is_dir() and not target.is_symlink():
            _merge(entry, target)


def extract_download(archive: str | os.PathLike, dest: str | os.PathLike,
                     only: str | None = None) -> Path:
    """safe_extract for an archive this package downloaded: one that is refused or cannot be
    read is deleted, so the next run fetches a fresh copy instead of failing on it forever."""
    archive = Path(archive)
    try:
        return safe_extract(archive, dest, only=only)
    except UnsafeArchiveError as exc:
        archive.unlink(missing_ok=True)
        raise UnsafeArchiveError(f"{exc}. The archive was deleted.") from None
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        archive.unlink(missing_ok=True)
        raise CorruptDataError(f"{archive} cannot be unpacked ({exc}). The archive was "
                               "deleted; run again to download a fresh copy.") from exc

