"""Handing an array from one thread to another: on the GPU, an event per array.

The loader's prefetch thread copies a batch to the device and normalises it there; the
training thread then computes with it. On the GPU these are queued work on each thread's
current CUDA stream, and nothing orders two streams by itself: while both threads use the
legacy default stream (CuPy's default) the order happens to hold, but with per-thread
default streams (CUPY_CUDA_PER_THREAD_DEFAULT_STREAM=1) or a stream of the loader's own,
the training step could read a batch whose copy has not finished.

    marker = mark_ready(x)      producer: an event recorded after the work that made x
    wait_ready(marker)          consumer: its stream waits for that event (the host does not)

On NumPy arrays the work is done when the call returns: both are no-ops (marker None).
"""

from __future__ import annotations

from minivgg.backend import is_cupy_array


def mark_ready(x):
    """An event recorded on the current stream after the work queued so far (CuPy), else None."""
    if not is_cupy_array(x):
        return None
    import cupy
    event = cupy.cuda.Event(block=False, disable_timing=True)
    event.record(cupy.cuda.get_current_stream())
    return event


def wait_ready(marker) -> None:
    """Make the current stream wait, on the device, for ``marker`` (None: nothing to wait for)."""
    if marker is not None:
        import cupy
        cupy.cuda.get_current_stream().wait_event(marker)
