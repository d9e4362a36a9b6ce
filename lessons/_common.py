"""What every lesson shares: where figures go, the FAST switch, printing, timing, the data.

Environment variables:

    MINIVGG_LESSON_OUT    root folder for the outputs (default lessons/out); a lesson writes
                          into <root>/<lesson name>/, e.g. lessons/out/03_convolution/
    MINIVGG_LESSON_FAST   1: smaller inputs, fewer steps -- the same logic, for CI
    MINIVGG_LESSON_DATA   "cifar10" (default: real pictures when they can be had, see
                          load_images) or "shapes" (the offline synthetic set, always)
    MINIVGG_LESSON_DOWNLOAD  0: never download CIFAR-10 (the tests set it); default 1
    MINIVGG_LESSON_NO_SUBSET 1: ignore the CIFAR-10 subset of this development machine
                          (../shared), as a user's clone would (the tests use it)
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

IN_NOTEBOOK = "ipykernel" in sys.modules     # opened as a notebook (the "# %%" cells)
if not IN_NOTEBOOK:
    matplotlib.use("Agg")                    # a script only writes its figures to files
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
    if IN_NOTEBOOK:                          # show it in the cell's output as well
        from IPython.display import display
        display(fig)
    plt.close(fig)
    print(f"   [figure] {path}")
    return path


def ink(image, value) -> str:
    """A text colour legible on the cell of ``image`` (an AxesImage) showing ``value``:
    white on dark cells, black on light ones (by the colour's luminance)."""
    r, g, b, _ = image.cmap(image.norm(value))
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5 else "black"


def timed(fn, repeat: int = 3) -> float:
    """The median wall time of ``repeat`` calls of ``fn()`` in seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _subset_folder():
    """The real CIFAR-10 subset beside the project, on the development machine only."""
    if os.environ.get("MINIVGG_LESSON_NO_SUBSET", "0") not in ("", "0"):
        return None
    found = (CIFAR_SUBSET / "cifar-10-batches-py" / "batches.meta").is_file()
    return CIFAR_SUBSET if found else None


_found_folder = None     # where load_images found CIFAR-10 (for cifar_folder)


def cifar_folder():
    """The folder load_images read CIFAR-10 from (None before, or for the shapes set);
    before any load_images call, the development machine's subset if present."""
    return _found_folder if _found_folder is not None else _subset_folder()


def chance(labels) -> float:
    """Chance accuracy, as every lesson defines it: the fraction of the most common class
    in ``labels`` (pass the test labels a lesson scores on) -- what always guessing that
    class would score."""
    counts = np.bincount(np.asarray(labels))
    return float(counts.max() / counts.sum())


def take(ds, n_train: int, n_test: int):
    """The first ``n_train`` training and ``n_test`` test images of ``ds`` (all it has, if
    fewer), with a line saying how many are really used."""
    from minivgg.data import Dataset
    sub = Dataset(ds.name, ds.train_images[:n_train], ds.train_labels[:n_train],
                  ds.test_images[:n_test], ds.test_labels[:n_test], list(ds.classes))
    print(f"   using {len(sub.train_images):,} training and {len(sub.test_images):,} test "
          f"images of {ds.name} (of {len(ds.train_images):,} and {len(ds.test_images):,})")
    return sub


def epochs_for(ds, epochs: int, shapes_epochs: int) -> int:
    """``epochs`` on CIFAR-10; ``shapes_epochs`` on the shapes fallback, whose small VGGs sit
    on the starting plateau (loss ln 10) for about a hundred steps before they learn (only
    the form of a shape tells its class; colours and backgrounds are random). Says so."""
    if ds.name != "shapes" or shapes_epochs == epochs:
        return epochs
    print(f"   (the shapes set needs more steps than CIFAR-10 to leave its starting plateau: "
          f"{shapes_epochs} epochs here instead of {epochs})")
    return shapes_epochs


def report_test_accuracy(correct: int, labels, what: str = "") -> float:
    """Print a test accuracy beside chance (lesson 01's definition) and return it (0..1).
    The tests read this line: keep its form."""
    n, base = len(labels), chance(labels)
    accuracy = correct / n
    print(f"   test accuracy{' ' + what if what else ''}: {accuracy:.1%} ({correct:,} of {n:,} "
          f"test images); chance {base:.1%}, so {accuracy / base:.1f} x chance")
    return accuracy


def how_to_get_real_data() -> str:
    """One line: how to have the lessons use real CIFAR-10 pictures."""
    from minivgg.data.download import cache_dir
    return (f"for real pictures, run a lesson once with network access (it downloads "
            f"CIFAR-10, 170 MB, into {cache_dir()}) or point MINIVGG_DATA at a folder "
            f"holding cifar-10-batches-py")


def load_images(n_shapes_train: int = 2000, n_shapes_test: int = 500):
    """Real CIFAR-10 pictures whenever they can be had, else the synthetic shapes set.

    Looks, in order, in $MINIVGG_DATA, in the package's cache (~/.cache/minivgg, the folder
    ``minivgg train`` uses), in the real subset of the development machine when present,
    and otherwise downloads CIFAR-10 once into the cache (MD5-checked, with a progress bar)
    if the network allows. Only when all of that fails: the shapes set, and a line saying
    how to get the real data. Prints where the pictures came from; returns a
    minivgg.data.Dataset.
    """
    global _found_folder
    from minivgg.data import DownloadError, load_cifar10, make_shapes
    from minivgg.data.dataset import CorruptDataError
    from minivgg.data.download import DEFAULT_CACHE, cache_dir

    if os.environ.get("MINIVGG_LESSON_DATA", "cifar10") == "shapes":
        print("   (MINIVGG_LESSON_DATA=shapes: using the synthetic shapes set)")
        return make_shapes(n_train=n_shapes_train, n_test=n_shapes_test, seed=0)
    places = []
    if os.environ.get("MINIVGG_DATA"):
        places.append(("$MINIVGG_DATA", cache_dir()))
    places.append(("the cache", DEFAULT_CACHE.expanduser()))
    if (subset := _subset_folder()) is not None:
        places.append(("the CIFAR-10 subset beside the project", subset))
    for what, folder in places:
        try:
            ds = load_cifar10(data_dir=folder, download=False)
        except FileNotFoundError:
            continue
        except (CorruptDataError, OSError) as exc:
            print(f"   (CIFAR-10 in {what}, {folder}, could not be read: {exc})")
            continue
        _found_folder = folder
        print(f"   CIFAR-10 from {what} ({folder}): {len(ds.train_images):,} training and "
              f"{len(ds.test_images):,} test images")
        return ds
    if os.environ.get("MINIVGG_LESSON_DOWNLOAD", "1") not in ("", "0"):
        print(f"   no CIFAR-10 found; downloading it once into {cache_dir()} ...")
        try:
            ds = load_cifar10(download=True)
            _found_folder = cache_dir()
            return ds
        except (DownloadError, OSError) as exc:
            print(f"   download failed: {str(exc).split('. ')[0]}")
    print("   (no CIFAR-10 here: using the synthetic shapes set instead; "
          f"{how_to_get_real_data()})")
    return make_shapes(n_train=n_shapes_train, n_test=n_shapes_test, seed=0)


def done() -> None:
    print(f"\nDone in {time.perf_counter() - _start:.1f} s.")
