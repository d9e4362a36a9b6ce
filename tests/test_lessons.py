"""Every lesson runs end to end (fast mode) and writes the figures it promises.

Each lesson declares its figures in a module-level ``FIGURES = [...]`` list, read here
from the source (importing a lesson would run it). A lesson writes into
``$MINIVGG_LESSON_OUT/<lesson name>/``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

LESSONS_DIR = Path(__file__).resolve().parent.parent / "lessons"
LESSONS = sorted(p for p in LESSONS_DIR.glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 120      # per lesson, fast mode; the whole set must stay within ~180 s


def declared_figures(path: Path) -> list[str]:
    """The lesson's module-level FIGURES list, read without running the lesson."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "FIGURES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{path.name} declares no FIGURES list")


def run_lesson(path: Path, out: Path, **env_extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, MINIVGG_LESSON_FAST="1", MINIVGG_LESSON_OUT=str(out),
               MPLBACKEND="Agg", **env_extra)
    return subprocess.run([sys.executable, str(path)], cwd=LESSONS_DIR.parent, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def test_lessons_are_numbered_without_gaps():
    numbers = [int(p.name[:2]) for p in LESSONS]
    assert numbers == list(range(1, len(numbers) + 1)), [p.name for p in LESSONS]
    assert len(numbers) >= 9


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_and_writes_its_figures(path, tmp_path):
    figures = declared_figures(path)
    assert figures, f"{path.name}: FIGURES is empty"
    result = run_lesson(path, tmp_path)
    assert result.returncode == 0, (
        f"{path.name} exited {result.returncode}\n--- stdout (tail) ---\n"
        f"{result.stdout[-3000:]}\n--- stderr (tail) ---\n{result.stderr[-3000:]}")
    folder = tmp_path / path.stem
    for name in figures:
        png = folder / name
        assert png.is_file(), f"{path.name} promised {name} but did not write {png}"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG file"
        assert png.stat().st_size > 2000, f"{png} is suspiciously small (an empty figure?)"
    written = sorted(p.name for p in folder.glob("*.png"))
    assert written == sorted(figures), (
        f"{path.name} wrote {written}, but declares {sorted(figures)}")
    assert "[FAST mode]" in result.stdout


def test_a_lesson_falls_back_to_the_offline_shapes_set(tmp_path):
    path = LESSONS_DIR / "01_images_as_arrays.py"
    result = run_lesson(path, tmp_path, MINIVGG_LESSON_DATA="shapes")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'shapes'" in result.stdout
    assert (tmp_path / path.stem / declared_figures(path)[0]).is_file()
