"""A run folder is held by one run at a time, and its files are kept consistent.

Two runs writing one folder would interleave their checkpoints and metrics without a
word, so a run *claims* its folder: it takes an exclusive lock (``fcntl.flock``) on the
file ``.lock`` inside it and holds it while it runs; the kernel releases the lock when the
process ends, however it ends. A second run -- a second ``--resume`` of the same run
included -- finds the lock taken and refuses. A fresh run (not resuming) also refuses a
folder that already holds any run file, before touching anything.

Default folder names are unique: the time plus a random suffix, and the folder is
created with ``os.mkdir``, which fails rather than reuse a folder that appeared meanwhile.

On every start the claimed folder is tidied: temporary files that a killed write left
behind are removed, and ``repair`` rewrites metrics.csv and best.npz from last.npz when
a kill fell between two writes (see the write order in minivgg.train).
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import time
from pathlib import Path

from minivgg import checkpoint, files

RUN_FILES = ("config.json", "metrics.csv", "last.npz", "best.npz")
LOCK = ".lock"


class RunFolderError(Exception):
    """The run folder cannot be used (taken, holds another run, not writable)."""


def new_run_dir(dataset: str, model: str, root="runs") -> Path:
    """Create and return a fresh folder root/<dataset>-<model>-<time>-<random>."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{dataset}-{model}")
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            path = root / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            try:
                os.mkdir(path)                       # atomic: fails if it exists
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise RunFolderError(f"cannot create a run folder in {root}: {exc.strerror or exc}; "
                             "choose a folder you can write with --out") from None
    raise RunFolderError(f"could not find a free run folder name in {root}")


class RunFolder:
    """``with RunFolder(path, resume):`` holds ``path`` exclusively for one run.

    Refuses (RunFolderError) a path that is a file, a folder another run holds, a
    folder that is not writable, and -- unless resuming -- a folder with run files.
    """

    def __init__(self, path, resume: bool = False):
        self.path, self.resume, self.fd = Path(path), resume, None

    def check(self) -> None:
        """The refusals that need no lock (a file in the way, another run's files): cheap,
        and they touch nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a folder; choose a folder for "
                                 "the run with --out")
        self._refuse_other_runs()

    def __enter__(self) -> RunFolder:
        self.check()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"cannot create the run folder {self.path}: "
                                 f"{exc.strerror or exc}; choose another --out") from None
        self.fd = self._lock()
        try:
            self._refuse_other_runs()            # one may have finished while we waited
            remove_temporary_files(self.path)
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _refuse_other_runs(self) -> None:
        found = [name for name in RUN_FILES if (self.path / name).exists()]
        if found and not self.resume:
            raise RunFolderError(f"{self.path} already holds a run ({', '.join(found)}); "
                                 f"continue it with --resume {self.path} or choose another "
                                 "--out (nothing was changed)")

    def _lock(self) -> int:
        """Open and lock .lock; retry if another run removed it in between (a new inode)."""
        lock = self.path / LOCK
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunFolderError(f"cannot write in the run folder {self.path}: "
                                     f"{exc.strerror or exc}; choose a folder you can write "
                                     "with --out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RunFolderError(f"{self.path} is in use by another run (process "
                                     f"{holder}); two runs must not write one folder: wait "
                                     "for it to finish, or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
            os.close(fd)

    def release(self) -> None:
        """Remove .lock and let go of it (a no-op when not held)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path / LOCK)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def remove_temporary_files(folder: Path) -> list[str]:
    """Delete the ``.<name>.<random>.tmp`` files that killed atomic writes left behind."""
    removed = []
    for p in Path(folder).iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
            p.unlink()
            removed.append(p.name)
    return removed


def repair(run_dir, last: checkpoint.Checkpoint, log=print) -> None:
    """Make metrics.csv and best.npz what ``last`` (the run's last.npz) says they are.

    metrics.csv is rewritten from the history in last.npz. best.npz is checked against the
    epoch and step last.npz records for it; if a kill came between the two writes, best
    is last itself, and is copied from it.
    """
    run_dir, p = Path(run_dir), last.progress
    if p.history:
        files.write_csv(run_dir / "metrics.csv", p.history)
    if p.best_epoch is None:
        return
    best_path = run_dir / "best.npz"
    try:
        best = checkpoint.read_checkpoint(best_path, arrays=False).progress
        if (best.epoch, best.global_step) == (p.best_epoch, p.best_step):
            return
    except files.RunFileError:
        pass
    if (p.epoch, p.batch, p.global_step) == (p.best_epoch, 0, p.best_step):
        files.atomic_write_bytes(best_path, last.path.read_bytes())
        log(f"repaired {best_path}: it is the checkpoint of epoch {p.best_epoch}, copied "
            "from last.npz (a write had been cut short)")
    else:
        log(f"warning: {best_path} is not the checkpoint of epoch {p.best_epoch} that "
            "last.npz records, and cannot be rebuilt from it; it is replaced the next time "
            "validation accuracy improves")
