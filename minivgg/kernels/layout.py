"""Physical layouts behind logical NCHW arrays, shared by the Numba and CUDA kernels.

Layers speak NCHW, but a convolution's GEMM produces channels-last data: its result
(N*OH*OW, F) *is* an NHWC array, and Conv2D returns it as an NCHW *view* (a transpose,
no copy). The fast kernels keep it that way: they read and write C-contiguous NHWC
buffers and hand back NCHW views of them, so no layer ever pays for a transpose.

Works for NumPy and CuPy arrays alike (both have ``strides``, ``transpose``, ``flags``).
"""

from __future__ import annotations

from minivgg.backend import get_array_module


def as_nhwc(x):
    """A C-contiguous (N, H, W, C) array with the data of the NCHW array ``x``.

    A view (free) when ``x`` is already an NCHW view of NHWC memory; otherwise one copy.
    """
    t = x.transpose(0, 2, 3, 1)
    return t if t.flags.c_contiguous else get_array_module(x).ascontiguousarray(t)


def nchw(t):
    """The NCHW view of an NHWC array (no copy)."""
    return t.transpose(0, 3, 1, 2)


def memory_order(x):
    """``x`` flattened in the order its entries lie in memory, and a function to undo it.

    Returns ``(flat, restore, perm)``: ``flat`` is 1-D and contiguous (a view when ``x`` is
    a transpose of a contiguous array, else a copy); ``restore(f)`` turns a flat result back
    into an array shaped like ``x`` with the same layout. Elementwise kernels use this to run
    over memory in order and keep NHWC data NHWC.
    """
    perm = sorted(range(x.ndim), key=lambda a: -x.strides[a] if x.shape[a] > 1 else 0)
    t = x.transpose(perm)
    if not t.flags.c_contiguous:
        perm, t = list(range(x.ndim)), get_array_module(x).ascontiguousarray(x)
    inverse = [perm.index(a) for a in range(x.ndim)]
    shape = t.shape
    return t.reshape(-1), lambda flat: flat.reshape(shape).transpose(inverse), perm


def in_order(y, perm):
    """``y`` (same shape as the array ``perm`` came from) flattened in the order ``perm``."""
    t = y.transpose(perm)
    if not t.flags.c_contiguous:
        t = get_array_module(y).ascontiguousarray(t)
    return t.reshape(-1)
