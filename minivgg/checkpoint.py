"""The files of a run folder: what each holds, how it is written and how it is read back.

This is the one module that knows the layout. A run folder holds:

    config.json      every choice the run was started with (rebuilds data, model, optimizer)
    metrics.csv      one row per epoch (a copy of the history kept in last.npz)
    last.npz         the latest state: resume continues from here
    best.npz         the state selected on validation accuracy (see minivgg.train)

A checkpoint is one .npz file of plain arrays, loaded with ``allow_pickle=False`` (nothing
in it can run code):

    model.<name>     every parameter and buffer, e.g. model.features.0.weight
    optim.<key>      the optimizer's state (lr, step count, momentum buffers, ...)
    meta             a JSON string: the RunFacts and the Progress below, side by side

Every file is written atomically (minivgg.files: a temporary file, then a rename), so a
crash mid-write never leaves half a file. No checkpoint holding a NaN or an infinity is
ever written (``encode_checkpoint`` refuses it).

A file that cannot be read raises ``RunFileError``: one line naming the file, what is
wrong with it and what to do.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minivgg.files import RunFileError

CHECKPOINTS = ("last", "best")


class NonFiniteState(ValueError):
    """The state to be saved holds NaN or infinite values; nothing was written."""


# -- what a checkpoint's meta holds ---------------------------------------------------------
@dataclass(frozen=True)
class RunFacts:
    """What a checkpoint says about its model and data: all that eval and predict need.

    settings     the VGGSettings dict (``model.spec``) that rebuilds the network
    classes      class names, in output order
    normalize    the Normalize statistics of the training part ({"mean": [...], "std": [...]})
    image_shape  (C, H, W) of the data set's images, before padding to the input size
    config       the run's configuration (transforms, batch sizes, data set)
    """

    settings: dict
    classes: list | None = None
    normalize: dict | None = None
    image_shape: list | None = None
    config: dict | None = None


def _new_sums() -> dict:
    return {"loss": 0.0, "correct": 0, "seen": 0}


@dataclass
class Progress:
    """Where training stands: enough to continue exactly, and the record so far.

    epoch, batch      epochs completed, and batches of the next epoch already trained
    sums              running loss / correct / seen of the unfinished epoch
    history           one metrics row per completed epoch
    best_top1         the selection accuracy of best.npz (-1 before any)
    best_epoch/_step  when best.npz was written: resume checks best.npz against these
    schedule          the schedule's state (reduce-on-plateau remembers accuracies)
    rng_states        the states (seeds) of the dropout layers' keyed generators
    """

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    sums: dict = field(default_factory=_new_sums)
    history: list = field(default_factory=list)
    best_top1: float = -1.0
    best_epoch: int | None = None
    best_step: int | None = None
    elapsed_s: float = 0.0
    schedule: dict = field(default_factory=dict)
    rng_states: list = field(default_factory=list)


# The meta JSON is flat: RunFacts' and Progress' fields side by side; "spec" (not
# "settings") is the key of the model settings, as in every checkpoint written so far.
_FACT_KEYS = {"settings": "spec", "classes": "classes", "normalize": "normalize",
              "image_shape": "image_shape", "config": "config"}


def _meta(facts: RunFacts, progress: Progress) -> dict:
    meta = {key: getattr(facts, name) for name, key in _FACT_KEYS.items()}
    meta.update(dataclasses.asdict(progress))
    return meta


def _facts_from(meta: dict, path) -> RunFacts:
    if not isinstance(meta.get("spec"), dict):
        raise RunFileError(f"{path}: has no model settings ('spec'); it was not written by "
                           "minivgg train, or is damaged: delete it"
                           + _other_hint(path))
    return RunFacts(**{name: meta.get(key) for name, key in _FACT_KEYS.items()})


def _progress_from(meta: dict) -> Progress:
    known = {f.name for f in dataclasses.fields(Progress)}
    return Progress(**{k: v for k, v in meta.items() if k in known})


# -- checkpoints ---------------------------------------------------------------------------
def non_finite(arrays: dict) -> list[str]:
    """The names of the arrays in ``arrays`` that hold a NaN or an infinity."""
    return [name for name, a in arrays.items()
            if np.asarray(a).dtype.kind in "fc" and not np.isfinite(a).all()]


def encode_checkpoint(model_state: dict, optim_state: dict, facts: RunFacts,
                      progress: Progress) -> bytes:
    """The bytes of a checkpoint file; NonFiniteState if any array or number is not finite."""
    bad = non_finite({f"model.{k}": v for k, v in model_state.items()})
    bad += non_finite({f"optim.{k}": v for k, v in optim_state.items()})
    if bad:
        raise NonFiniteState(f"{len(bad)} arrays hold NaN or infinite values (first: "
                             f"{', '.join(bad[:3])}); refusing to save them")
    if not all(math.isfinite(row[k]) for row in progress.history for k in row
               if isinstance(row[k], float)):
        raise NonFiniteState("the metrics hold NaN or infinite values; refusing to save them")
    arrays = {f"model.{k}": np.asarray(v) for k, v in model_state.items()}
    arrays.update({f"optim.{k}": np.asarray(v) for k, v in optim_state.items()})
    arrays["meta"] = np.array(json.dumps(_meta(facts, progress)))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@dataclass
class Checkpoint:
    """A checkpoint file, read back: arrays by name, and what its meta says."""

    path: Path
    model_state: dict
    optim_state: dict
    facts: RunFacts
    progress: Progress


def _other_hint(path) -> str:
    path = Path(path)
    if path.stem in CHECKPOINTS:
        other = path.with_name(("best" if path.stem == "last" else "last") + ".npz")
        return (f", and use the run's other checkpoint {other} if it is there (--checkpoint "
                f"{other.stem})")
    return ""


def unusable(path, what: str) -> RunFileError:
    """The error for a checkpoint that cannot be used: the file, what is wrong, what to do."""
    return RunFileError(f"{path}: {what}; delete it{_other_hint(path)}")


def read_checkpoint(path, arrays: bool = True) -> Checkpoint:
    """Read a checkpoint; ``arrays=False`` reads only its meta (cheap, for checks).

    Pickles are refused. A damaged file -- random bytes, truncated, empty, without the
    model settings -- raises RunFileError naming the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"{path}: no checkpoint there; expected an .npz file written by "
                           "minivgg train")
    if path.stat().st_size == 0:
        raise unusable(path, "the file is empty (a write that never finished?)")
    if not zipfile.is_zipfile(path):
        raise unusable(path, "not an .npz archive (damaged, or not a checkpoint)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "meta" not in npz.files:
                raise unusable(path, "not a minivgg checkpoint (it has no 'meta' entry)")
            meta = json.loads(str(npz["meta"]))
            if not isinstance(meta, dict):
                raise unusable(path, "its 'meta' entry is not a JSON object")
            model, optim = {}, {}
            for key in npz.files if arrays else ():
                kind, _, name = key.partition(".")
                if kind in ("model", "optim"):
                    (model if kind == "model" else optim)[name] = npz[key]
    except RunFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise unusable(path, f"truncated or damaged ({type(exc).__name__})") from None
    except ValueError as exc:        # numpy: pickled objects refused; json: bad meta
        what = ("it holds pickled objects, which are never loaded" if "pickle" in str(exc)
                else f"its contents cannot be read ({type(exc).__name__})")
        raise unusable(path, what) from None
    return Checkpoint(path, model, optim, _facts_from(meta, path), _progress_from(meta))


def check_arrays_fit(ckpt: Checkpoint, expected: dict) -> None:
    """Raise RunFileError unless the checkpoint's arrays have exactly the ``expected``
    shapes ({name: shape}, computed from the settings alone, before anything is built)."""
    got = {k: tuple(np.shape(v)) for k, v in ckpt.model_state.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = [f"{k} is {got[k]}, expected {tuple(expected[k])}" for k in expected
             if k in got and got[k] != tuple(expected[k])]
    if missing or extra or wrong:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:3])}"] if extra else []) + wrong[:2]
        raise unusable(ckpt.path, "its arrays do not match the model settings it "
                          f"claims ({'; '.join(parts)})")


# -- random generators -----------------------------------------------------------------------
def rng_states(generators) -> list[dict]:
    """The states of the dropout layers' keyed generators, JSON-friendly (Python ints)."""
    return [g.state_dict() for g in generators]


def set_rng_states(generators, states) -> None:
    if len(generators) != len(states):
        raise ValueError(f"set_rng_states: the model has {len(generators)} random generators "
                         f"but the checkpoint saved {len(states)}")
    for g, state in zip(generators, states):
        g.load_state_dict(state)
