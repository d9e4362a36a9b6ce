"""What the hostile-run tests share: a finished run to damage, and how to read the result."""

from __future__ import annotations

import shutil
from pathlib import Path

from minivgg.cli import main

QUICK = ["--width", "0.125", "--epochs", "1", "--batch-size", "32", "--no-progress",
         "--backend", "numba", "--no-plots"]
SHAPES = ["train", "--dataset", "shapes", "--limit", "96"]
RESUME = ["--no-progress", "--no-plots"]


def finish_a_run(folder: Path) -> Path:
    """A one-epoch run on the synthetic shapes, written to ``folder``/run."""
    run = folder / "run"
    assert main([*SHAPES, "--out", str(run), *QUICK]) == 0
    return run


def copy_of(run: Path, folder: Path) -> Path:
    copy = folder / "run"
    shutil.copytree(run, copy)
    return copy


def snapshot(folder: Path) -> dict:
    """Every file of ``folder`` (hidden ones too), name -> bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def one_line(capsys) -> str:
    """The command's stderr: exactly one line, and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]
