"""Scratch memory: one small helper for every buffer that is reused from call to call.

Why reuse at all: a convolution's im2col rows or Winograd tiles are tens of megabytes per
step, and a fresh array that size is fresh pages from the operating system, each one a
page fault on first touch, every step. Writing into last step's buffer costs nothing.

Who owns a workspace:

- **a layer**, for what it keeps from forward to backward. Conv2D holds its im2col rows
  (or Winograd tiles) in its own ``Workspace``: its backward reads them, writes ``dcols``
  over them, and the next forward writes its rows into the same memory. A layer's own
  workspace means two layers never share a buffer.
- **a kernel**, for intermediates that never leave one call (Winograd's filter transform
  and GEMM outputs, winograd_cpu.py). They live in ``thread_workspace()``: one per
  thread, shared by every layer that runs on it.

The rule that makes this safe: a buffer handed out for a key stays valid until the next
request for the same key from the same workspace. Its contents on hand-out are undefined.
"""

from __future__ import annotations

import threading
from math import prod

import numpy as np

from minivgg.backend import get_array_module


class Workspace:
    """Named, reusable buffers; each grows to the largest size asked for and is then reused.

        ws = Workspace()
        cols = ws.buffer("cols", (rows, width), np.float32)      # xp=cupy for the GPU
    """

    def __init__(self):
        self._buffers: dict[str, object] = {}

    def buffer(self, key: str, shape, dtype, xp=np):
        """A C-contiguous ``xp`` array of ``shape`` and ``dtype`` for ``key``; contents undefined.

        Reuses the storage of the last buffer for ``key`` when it is on the same device,
        of the same dtype and large enough (a smaller request takes a view of its start);
        otherwise replaces it.
        """
        dtype, size = np.dtype(dtype), prod(shape)
        old = self._buffers.get(key)
        if (old is None or old.dtype != dtype or old.size < size
                or get_array_module(old) is not xp):
            old = self._buffers[key] = xp.empty(size, dtype=dtype)
        return old[:size].reshape(shape)

    def clear(self) -> None:
        """Let go of every buffer (their memory is freed once nothing else holds them)."""
        self._buffers.clear()

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(b.nbytes for b in self._buffers.values())

    def __repr__(self):
        return f"Workspace({sorted(self._buffers)}, {self.nbytes / 2**20:.1f} MiB)"


_local = threading.local()


def thread_workspace() -> Workspace:
    """The calling thread's workspace, for kernel intermediates that never leave a call."""
    workspace = getattr(_local, "workspace", None)
    if workspace is None:
        workspace = _local.workspace = Workspace()
    return workspace


# -- the column budget: how large one convolution's im2col matrix may grow -----------------

COLUMN_BUDGET_BYTES = 1 << 30      # 1 GiB; set_column_budget changes it for the process

_budget = {"bytes": COLUMN_BUDGET_BYTES}


def column_budget() -> int:
    """Bytes one im2col column matrix may take; a larger batch is convolved in chunks."""
    return _budget["bytes"]


def set_column_budget(nbytes: int) -> int:
    """Set the column budget (bytes, >= 1); returns the previous one.

    Why a budget: the column matrix of a convolution is kh*kw times its input, and grows
    with the batch: 57.8 GB for VGG-16's conv1_2 at 224x224 and batch 500. Conv2D builds it
    for at most ``images_per_chunk`` images at a time (layers/conv.py).
    """
    if not isinstance(nbytes, (int, np.integer)) or isinstance(nbytes, bool) or nbytes < 1:
        raise ValueError(f"set_column_budget: expected a positive number of bytes, "
                         f"got {nbytes!r}")
    previous, _budget["bytes"] = _budget["bytes"], int(nbytes)
    return previous


# In inference (no_grad) the column matrix is scratch that no backward reads, so chunking
# it costs nothing but smaller GEMMs: an eighth of a GiB still gives VGG-16's conv1_2
# GEMMs of 50,000 rows, and keeps its peak memory near PyTorch's (benchmarks/bench_vgg16.py).
INFERENCE_BUDGET_BYTES = 1 << 27


def images_per_chunk(batch: int, bytes_per_image: int, inference: bool = False) -> int:
    """How many of ``batch`` images fit the column budget at once (at least 1); in
    inference, the smaller of the budget and INFERENCE_BUDGET_BYTES."""
    budget = min(column_budget(), INFERENCE_BUDGET_BYTES) if inference else column_budget()
    return max(1, min(batch, budget // max(1, bytes_per_image)))
