"""What every lesson shares: where figures go, the FAST switch, printing, timing, the data.

Environment variables:

    MINIVGG_LESSON_OUT    root folder for the outputs (default lessons/out); a lesson writes
                          into <root>/<lesson name>/, e.g. lessons/out/03_convolution/
    MINIVGG_LESSON_FAST   1: smaller inputs, fewer steps -- the same logic, for CI
    MINIVGG_LESSON_DATA   "cifar10" (default: the real subset when present) or "shapes"
                          (the offline synthetic set)
    MINIVGG_LESSON_THREADS  BLAS threads (default 1; 0 keeps the library's default). The
                          lessons' matrices are small, and on a busy 2-core machine
                          OpenBLAS's spinning threads made a small VGG's training step
                          10x slower (lesson 11 measures it). Import NumPy from here
                          (``from _common import np``): the setting must come first.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

_threads = os.environ.get("MINIVGG_LESSON_THREADS", "1")
if _threads != "0":
    for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)

import matplotlib  # noqa: E402  (after the thread settings: it loads NumPy)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

FAST = os.environ.get("MINIVGG_LESSON_FAST", "0") not in ("", "0")
CIFAR_SUBSET = ROOT.parent / "shared" / "data" / "cifar10-subset"
_start = time.perf_counter()


def out_dir(lesson: str) -> Path:
    """The folder this lesson writes into (created)."""
    root = Path(os.environ.get("MINIVGG_LESSON_OUT") or ROOT / "lessons" / "out")
    folder = root / lesson
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def title(text: str) -> None:
    bar = "=" * len(text)
    print(f"\n{bar}\n{text}\n{bar}" + ("   [FAST mode]" if FAST else ""))


def section(text: str) -> None:
    print(f"\n-- {text} " + "-" * max(0, 72 - len(text)))


def say(text: str) -> None:
    """Print a paragraph of explanation (indentation in the source is removed)."""
    print(textwrap.dedent(text).strip("\n"))


def save(fig, folder: Path, name: str) -> Path:
    path = folder / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"   [figure] {path}")
    return path


def timed(fn, repeat: int = 3) -> float:
    """The median wall time of ``repeat`` calls of ``fn()`` in seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def cifar_folder():
    """The folder holding the real CIFAR-10 subset beside the project, or None."""
    found = (CIFAR_SUBSET / "cifar-10-batches-py" / "batches.meta").is_file()
    return CIFAR_SUBSET if found else None


def load_images(n_shapes_train: int = 2000, n_shapes_test: int = 500):
    """Real CIFAR-10 pictures when they can be had offline, else the synthetic shapes set.

    Looks for the real subset beside the project (../shared/data/cifar10-subset), then in
    $MINIVGG_DATA or ~/.cache/minivgg; never downloads. Returns a minivgg.data.Dataset.
    """
    from minivgg.data import load_cifar10, make_shapes
    if os.environ.get("MINIVGG_LESSON_DATA", "cifar10") != "shapes":
        for folder in (cifar_folder(), None):
            try:
                return load_cifar10(data_dir=folder, download=False)
            except (FileNotFoundError, OSError):
                continue
        print("   (no CIFAR-10 found offline: using the synthetic shapes set instead)")
    return make_shapes(n_train=n_shapes_train, n_test=n_shapes_test, seed=0)


def done() -> None:
    print(f"\nDone in {time.perf_counter() - _start:.1f} s.")
