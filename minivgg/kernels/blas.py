"""GEMMs for the Numba kernels: worker threads share the work, every GEMM on one core.

Winograd's 16 products V[k] @ U[k] are independent. Given to a multi-threaded OpenBLAS one
after another, each is split across all cores and ends in a barrier where OpenBLAS's
threads spin; on a shared machine (more runnable threads than cores) a descheduled thread
stalls the rest, and 16 such barriers per layer cost several times the arithmetic. So while
``matmul_stack`` runs, OpenBLAS is set to one thread and Python threads (NumPy releases the
GIL in matmul) take the products in contiguous blocks: several times faster on the busy
benchmark machine (benchmarks/results/amd-epyc-2core-2026-11-24-gemm-stacks.md). The
calling thread takes the first block itself rather than sleep while a worker does it: one
thread hand-off fewer per GEMM (the default training step 91 -> 79 ms, four A/B pairs).

One big GEMM (``matmul_rows``: im2col's products, Dense layers) is shared out the same way,
by blocks of rows (for a weight gradient, of the inner dimension), for a second reason
found on the benchmark: after a multi-threaded OpenBLAS call, OpenBLAS's threads keep
spinning for a while (its thread timeout) and take the other core from the Numba kernels
that follow, so every layer after the first
convolution's im2col GEMM ran slower (benchmarks/results/amd-epyc-2core-2026-11-25.md;
``OPENBLAS_THREAD_TIMEOUT`` cures it too, but only when set before NumPy is imported).
OpenBLAS at one thread never wakes its pool, so nothing is left spinning.

OpenBLAS's thread count is reached through ctypes in the library NumPy loaded; where no
OpenBLAS is found (MKL, Accelerate, ...) this falls back to one plain ``np.matmul``.
Not for concurrent use from several Python threads (the BLAS setting is process-wide).
Called through ``minivgg.kernels.matmul``, which checks the shapes and allocates ``out``.
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


class _OneThread:
    """OpenBLAS at one thread inside the block; yields the thread count it had (or None)."""

    def __enter__(self):
        api = _openblas()
        self.threads = api[0]() if api is not None else None
        if self.threads is not None and self.threads > 1:
            api[1](1)
        return self.threads

    def __exit__(self, *exc):
        if self.threads is not None and self.threads > 1:
            _openblas()[1](self.threads)


SMALL_GEMM = 1 << 20     # multiply-adds below which one thread does the whole product


def _share(parts, gemm=np.matmul):
    """Run gemm(*args) for every args in ``parts``: the first on this thread, the others on
    worker threads at the same time; return when all are done."""
    jobs = [_pool(len(parts) - 1).submit(gemm, *args) for args in parts[1:]]
    try:
        gemm(*parts[0])
    finally:
        for job in jobs:
            job.result()


def _gemm_bias(a, b, out, bias):
    """out = a @ b, then bias added to each row while those rows are still in cache."""
    np.matmul(a, b, out=out)
    if bias is not None:
        out += bias
    return out


def _column_major(a) -> bool:
    """Whether ``a`` is a Fortran-ordered (column-major) matrix and not also row-major."""
    return a.flags.f_contiguous and not a.flags.c_contiguous


def _blocks(n, workers):
    """Contiguous [i, j) blocks of range(n), one per worker, their sizes differing by <= 1."""
    bounds = [n * k // workers for k in range(workers + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def matmul_rows(a, b, out=None, bias=None):
    """``a @ b`` (+ ``bias`` (N,) on every row) for 2-D a (M, K) and b (K, N); blocks of
    rows of a shared out among threads, each adding the bias to its own rows.

    A short, wide ``a`` (M < K: a weight gradient dY.T @ cols, whose K is every output
    position of the batch) is split along K instead: each thread multiplies its slice of
    the positions into a partial (M, N) product, and the partials are added. Splitting its
    few rows would give each thread a sliver of the output to compute from all of K.
    Where both operands of such a product are column-major (the RGB first layer's weight
    gradient: dY.T @ the im2col planes' transpose), the small (N, M) product b.T @ a.T is
    computed instead and transposed into ``out``: OpenBLAS reads row-major operands of that
    shape about twice as fast (4.1 -> 2.4 ms for 16x131072 @ 131072x27 on one core here).
    """
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    m, k = a.shape
    if m < k and bias is None and _column_major(a) and _column_major(b):
        out[...] = matmul_rows(b.T, a.T).T
        return out
    with _OneThread() as threads:
        workers = min(threads or 1, max(m, k))
        if workers < 2 or m * k * b.shape[1] < SMALL_GEMM:
            return _gemm_bias(a, b, out, bias)
        if m < k:
            partials = [out] + [np.empty_like(out) for _ in range(workers - 1)]
            _share([(a[:, i:j], b[i:j], part)
                    for (i, j), part in zip(_blocks(k, workers), partials)])
            for part in partials[1:]:
                out += part
            if bias is not None:
                out += bias
            return out
        _share([(a[i:j], b, out[i:j], bias) for i, j in _blocks(m, workers)], _gemm_bias)
    return out


def matmul_stack(a, b, out):
    """``out[k] = a[k] @ b[k]`` for every k: a (K, M, L), b (K, L, N), out (K, M, N)."""
    with _OneThread() as threads:
        workers = min(threads or 1, len(a))
        if workers < 2:
            return np.matmul(a, b, out=out)
        _share([(a[i:j], b[i:j], out[i:j]) for i, j in _blocks(len(a), workers)])
    return out
