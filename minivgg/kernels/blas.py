"""Many GEMMs at once: each worker thread runs its share, every GEMM on one core.

Winograd's 16 products V[k] @ U[k] are independent. Given to a multi-threaded OpenBLAS one
after another, each is split across all cores and ends in a barrier where OpenBLAS's
threads spin; on a shared machine (more runnable threads than cores) a descheduled thread
stalls the rest, and 16 such barriers per layer cost 5-20x (measured on the 2-vCPU EPYC
under load 7: 16 x (1024x256 @ 256x256) took 180 ms; two threads of 8 single-threaded
GEMMs each, 36 ms). So while ``matmul_stack`` runs, OpenBLAS is set to one thread and
Python threads (NumPy releases the GIL in matmul) take the products in contiguous blocks.

OpenBLAS's thread count is reached through ctypes in the library NumPy loaded; where no
OpenBLAS is found (MKL, Accelerate, ...) this falls back to one plain ``np.matmul``.
Not for concurrent use from several Python threads (the BLAS setting is process-wide).
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_SUFFIXES = ("", "64_", "_64")
_state: dict = {}


def _openblas():
    """(get_num_threads, set_num_threads) of the OpenBLAS in this process, or None."""
    if "api" not in _state:
        _state["api"] = None
        try:
            with open("/proc/self/maps") as maps:
                paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
        except OSError:
            paths = set()
        for path in sorted(paths, key=lambda p: "numpy" not in p):    # NumPy's own first
            lib = ctypes.CDLL(path)
            for prefix in ("scipy_openblas", "openblas"):
                for suffix in _SUFFIXES:
                    get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    if get is not None and put is not None:
                        get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                        _state["api"] = (get, put)
                        return _state["api"]
    return _state["api"]


def _pool(workers):
    if _state.get("workers") != workers:
        _state["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="minivgg-gemm")
        _state["workers"] = workers
    return _state["pool"]


def matmul_stack(a, b, out):
    """``out[k] = a[k] @ b[k]`` for every k: a (K, M, L), b (K, L, N), out (K, M, N)."""
    api = _openblas()
    threads = api[0]() if api is not None else 1
    workers = min(threads, len(a))
    if api is None or workers < 2:
        return np.matmul(a, b, out=out)
    bounds = np.linspace(0, len(a), workers + 1).astype(int)
    api[1](1)
    try:
        jobs = [_pool(workers).submit(np.matmul, a[i:j], b[i:j], out[i:j])
                for i, j in zip(bounds[:-1], bounds[1:])]
        for job in jobs:
            job.result()
    finally:
        api[1](threads)
    return out
