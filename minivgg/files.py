"""Run files written atomically, and read back with errors that name the file.

Every file of a run is written to a temporary file in the same folder and renamed over the
old one (``os.replace`` is atomic), so a crash or Ctrl-C mid-write never leaves half a
file: the previous version stays intact until the new one is complete. A kill can leave
the temporary file behind (``.<name>.<random>.tmp``); the next start removes it
(minivgg.runfolder).

What the files hold is minivgg.checkpoint's business; this module only moves bytes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path


class RunFileError(ValueError):
    """A run file (checkpoint, config.json, metrics.csv) is missing, damaged or foreign."""


class WriteError(OSError):
    """A run file could not be written (disk full, read-only, no permission)."""


# -- writing, atomically ------------------------------------------------------------------
def _write_all(f, data: bytes) -> None:
    """Write ``data`` to the open file ``f`` and push it to the disk."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``path`` via a temporary file in its folder and a rename: never half a file.

    Raises WriteError naming the file when the disk is full or the folder is not writable;
    the temporary file is removed and the previous version of ``path`` stays as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())           # mkstemp makes 0600; use the usual mode
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data)
        os.replace(tmp, path)
    except OSError as exc:
        raise _write_error(path, exc) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _write_error(path: Path, exc: OSError) -> WriteError:
    advice = {28: "free some disk space", 30: "the disk is read-only: choose another --out",
              13: "choose a folder you can write with --out"}.get(exc.errno, "check the folder")
    error = WriteError(f"could not write {path}: {exc.strerror or exc}; {advice}. The files "
                       "written before (if any) are intact.")
    error.errno = exc.errno
    return error


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path) -> dict:
    """A JSON object from ``path``; RunFileError naming the file if it is not one."""
    path = Path(path)
    try:
        with open(path) as f:
            value = json.load(f)
    except FileNotFoundError:
        raise RunFileError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFileError(f"{path}: not valid JSON ({exc}); it is damaged: restore it or "
                           "start a new run in another folder") from None
    if not isinstance(value, dict):
        raise RunFileError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def write_csv(path, rows: list[dict]) -> None:
    """Rewrite the whole table (a few hundred rows at most) so a reader never sees half."""
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(path, out.getvalue().encode())


def read_csv(path) -> list[dict]:
    """Rows of a metrics.csv, numbers converted to float (the epoch to int)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                for row in rows]
    except (TypeError, ValueError) as exc:
        raise RunFileError(f"{path}: not a metrics table ({exc}); it is rewritten from "
                           "last.npz when the run is resumed") from None
