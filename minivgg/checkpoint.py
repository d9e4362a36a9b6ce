"""Checkpoints and run-folder files, always written atomically.

A run folder holds everything about one training run:

    config.json      every choice the run was started with (rebuilds data, model, optimizer)
    metrics.csv      one row per epoch
    last.npz         the latest state: resume continues from here
    best.npz         the state with the best test accuracy so far

A checkpoint is one .npz file of plain arrays, loaded with ``allow_pickle=False`` (nothing
in it can run code):

    model.<name>     every parameter and buffer, e.g. model.features.0.weight
    optim.<key>      the optimizer's state (lr, step count, momentum buffers, ...)
    meta             a JSON string: epoch and position, schedule state, random-generator
                     states, normalisation statistics, class names, model spec, metrics

Every file is written to a temporary file in the same folder and renamed over the old one
(``os.replace`` is atomic), so a crash or Ctrl-C mid-write never leaves half a file: the
previous version stays intact until the new one is complete.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())           # mkstemp makes 0600; use the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


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
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in rows]


def encode_checkpoint(model_state: dict, optim_state: dict, meta: dict) -> bytes:
    """The bytes of a checkpoint file (see the module docstring for the layout)."""
    arrays = {f"model.{k}": np.asarray(v) for k, v in model_state.items()}
    arrays.update({f"optim.{k}": np.asarray(v) for k, v in optim_state.items()})
    arrays["meta"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_checkpoint(path, model_state: dict, optim_state: dict, meta: dict) -> None:
    """Write one checkpoint file atomically."""
    atomic_write_bytes(path, encode_checkpoint(model_state, optim_state, meta))


def load_checkpoint(path) -> tuple[dict, dict, dict]:
    """Read a checkpoint -> (model_state, optim_state, meta); pickles are refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint at {path}")
    with np.load(path, allow_pickle=False) as npz:
        if "meta" not in npz.files:
            raise ValueError(f"load_checkpoint: {path} is not a minivgg checkpoint "
                             f"(no 'meta' entry; it has {npz.files[:5]}...)")
        model = {k[len("model."):]: npz[k] for k in npz.files if k.startswith("model.")}
        optim = {k[len("optim."):]: npz[k] for k in npz.files if k.startswith("optim.")}
        meta = json.loads(str(npz["meta"]))
    return model, optim, meta


def rng_states(generators) -> list[dict]:
    """The bit-generator states of numpy Generators, JSON-friendly (Python ints)."""
    return [g.bit_generator.state for g in generators]


def set_rng_states(generators, states) -> None:
    if len(generators) != len(states):
        raise ValueError(f"set_rng_states: the model has {len(generators)} random generators "
                         f"but the checkpoint saved {len(states)}")
    for g, state in zip(generators, states):
        g.bit_generator.state = state
