"""Every lesson runs end to end (fast mode) and writes the figures it promises.

Each lesson declares its figures in a module-level ``FIGURES = [...]`` list, read here
from the source (importing a lesson would run it). A lesson writes into
``$MINIVGG_LESSON_OUT/<lesson name>/``. The tests never download: they set
MINIVGG_LESSON_DOWNLOAD=0, so a lesson finds CIFAR-10 where it already is (MINIVGG_DATA,
the cache) or falls back to the shapes set.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
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


def run_lesson(path: Path, out: Path, timeout: float = TIMEOUT_S,
               **env_extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, MINIVGG_LESSON_FAST="1", MINIVGG_LESSON_OUT=str(out),
               MPLBACKEND="Agg", MINIVGG_LESSON_DOWNLOAD="0")
    env.update(env_extra)
    return subprocess.run([sys.executable, str(path)], cwd=LESSONS_DIR.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


def training_lessons() -> list[Path]:
    """The lessons that train and report a test accuracy (with _common.report_test_accuracy)."""
    return [p for p in LESSONS if "report_test_accuracy(" in p.read_text()]


def test_lessons_are_numbered_without_gaps():
    numbers = [int(p.name[:2]) for p in LESSONS]
    assert numbers == list(range(1, len(numbers) + 1)), [p.name for p in LESSONS]
    assert len(numbers) >= 9


@pytest.mark.slow
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


CELL = re.compile(r"^# %%", re.MULTILINE)


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_opens_as_a_notebook(path):
    """Percent-format cells (Jupyter with jupytext, VS Code): at least three, and the first
    cell -- everything before the first marker -- is the lesson's title docstring alone."""
    source = path.read_text()
    markers = CELL.findall(source)
    assert len(markers) >= 3, f"{path.name} has {len(markers)} '# %%' cell markers, needs >= 3"
    module = ast.parse(source)
    docstring = ast.get_docstring(module, clean=False)
    assert docstring, f"{path.name} has no module docstring"
    assert docstring.startswith(f"Lesson {path.name[:2]} -- "), (
        f"{path.name}: the docstring should start 'Lesson {path.name[:2]} -- <title>'")
    first_cell = source[:CELL.search(source).start()].strip()
    assert first_cell == ast.get_source_segment(source, module.body[0]).strip(), (
        f"{path.name}: the first cell should be the title docstring and nothing else")


ACCURACY = re.compile(r"test accuracy[^:\n]*: ([\d.]+)% \(([\d,]+) of ([\d,]+) test images\); "
                      r"chance ([\d.]+)%")
USING = re.compile(r"using ([\d,]+) training and ([\d,]+) test images of (\S+)")


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def _training_params():
    return [pytest.param(p, id=p.stem) for p in training_lessons()]


@pytest.mark.slow
@pytest.mark.parametrize("path", _training_params())
def test_training_lesson_teaches_without_any_data(path, tmp_path):
    """No CIFAR-10 anywhere (an empty MINIVGG_DATA, an empty HOME cache, the development
    machine's subset hidden, no download), normal mode: the lesson falls back to the shapes
    set, says how to get the real data, ends at least twice above chance, and the counts it
    prints are the ones its accuracy was computed on."""
    copy = tmp_path / "lessons"
    copy.mkdir()
    for source in LESSONS_DIR.glob("*.py"):
        shutil.copy(source, copy / source.name)
    (tmp_path / "data").mkdir()
    (tmp_path / "home").mkdir()
    result = run_lesson(copy / path.name, tmp_path / "out", timeout=300,
                        MINIVGG_LESSON_FAST="0", MINIVGG_DATA=str(tmp_path / "data"),
                        HOME=str(tmp_path / "home"), MINIVGG_LESSON_NO_SUBSET="1")
    out = result.stdout
    assert result.returncode == 0, f"{path.name}:\n{out[-3000:]}\n{result.stderr[-3000:]}"
    assert "using the synthetic shapes set" in out and "MINIVGG_DATA" in out, out[:2000]
    used = USING.findall(out)
    assert used, f"{path.name} does not say how many images it used"
    assert all(name == "shapes" for *_, name in used), used
    test_counts = {_number(n_test) for _, n_test, _ in used}
    scores = ACCURACY.findall(out)
    assert scores, f"{path.name} prints no test accuracy"
    for percent, correct, total, _ in scores:
        assert _number(total) in test_counts, (
            f"{path.name} reports accuracy on {total} test images but said it used "
            f"{sorted(test_counts)}")
        assert abs(100 * _number(correct) / _number(total) - float(percent)) < 0.051
    percent, _, _, base = scores[-1]
    assert float(percent) >= 2 * float(base), (
        f"{path.name} ends at {percent}% on the shapes set, less than twice chance ({base}%)")
