"""Keep freed memory in the process, so that each training step does not fault it in again.

Every step allocates and frees the same arrays: each layer's output, its cache, the
gradients -- megabytes each (the default model's first block: 8.4 MB per array at batch
128). glibc's ``malloc`` gives a freed block back to the operating system when it was
mapped on its own (blocks above the *mmap threshold*) or when the free space at the top of
its heap exceeds the *trim threshold*. The next step's array of the same size then gets
fresh pages from the kernel, and each page is zeroed on its first write: a page fault per
4 KB. Measured here: batch norm's forward on that first block took 4.7 ms with its two
outputs freshly mapped against 0.6 ms in reused memory; a default training step made about
1,000 page faults and spent 16 ms in the kernel (system time, two threads).

``keep_freed_memory()`` raises both thresholds (``mallopt``, glibc on Linux only): arrays up
to 32 MB -- the largest threshold glibc accepts -- come from the heap, and the heap keeps
up to 1 GB of free space instead of trimming it. The cost: the process holds on to memory
it has freed, up to its peak, instead of returning it (peak memory, what the benchmarks
report, moves little: VGG-11-CIFAR training at batch 128 679 -> 683 MB, VGG-16 inference
at 224x224 batch 8 1108 -> 1137 MB; benchmarks/results/amd-epyc-2core-2026-12-03.md).
Elsewhere (macOS, Windows, musl) it does nothing. Set ``MINIVGG_KEEP_MEMORY=0`` to leave
the allocator alone. The Numba backend calls it when its kernels are imported (cpu.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1           # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20       # glibc's upper limit for it on 64-bit systems
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None    # None: not tried yet


def _glibc():
    """The C library, if it is glibc (it has mallopt and gnu_get_libc_version); else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):     # musl has mallopt as a no-op
            return None
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if they are set."""
    global _applied
    if _applied is None:
        libc = None if os.environ.get("MINIVGG_KEEP_MEMORY", "1") == "0" else _glibc()
        _applied = libc is not None and bool(
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
