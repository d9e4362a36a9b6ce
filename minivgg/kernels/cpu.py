"""Numba kernels for the CPU: the functions of reference.py, compiled and parallel.

Same signatures, same results as the reference kernels (tests/test_kernels.py checks it).
What differs is the memory layout behind the logical NCHW arrays (see layout.py): every
kernel here reads and writes C-contiguous NHWC buffers, so

- the output of a convolution's GEMM, already NHWC, flows through ReLU and pooling
  without a single transpose, and the arrays returned are NCHW *views* of NHWC memory;
- the innermost loop of every kernel runs over channels, which are contiguous.

Design rules, each for a measured reason (notes/cpu-performance.md):

- ``parallel=True`` with ``prange`` over the batch (times rows, so a batch of one still
  splits); ``cache=True`` so a warm start loads compiled code instead of recompiling.
- col2im and max-pool backward are *gathers*: each input pixel sums the column entries
  (window gradients) that read it. No two threads write the same place, so no atomics and
  no separate zero-fill pass (each pixel's channels start at zero in cache, then add up);
  and the sum runs in the reference's (i, j) order, starting from zero, so the result is
  bit-for-bit the reference's.
- No fastmath: it would let LLVM reorder sums and change results.
- The GEMMs stay in NumPy (OpenBLAS); these kernels are everything around them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from minivgg.backend import configure_numba_threads
from minivgg.kernels.blas import matmul_rows
from minivgg.kernels.layout import as_nhwc, in_order, memory_order, nchw
from minivgg.kernels.reference import conv_output_size

configure_numba_threads()  # before the first parallel kernel runs

__all__ = ["im2col", "col2im", "maxpool_forward", "maxpool_backward",
           "relu_forward", "relu_backward", "matmul"]


# -- compiled loops (all on C-contiguous NHWC arrays) -----------------------------------------

@njit(parallel=True, cache=True)
def _im2col_nhwc(x, kh, kw, stride, pad, oh, ow, cols):
    n, h, w, c = x.shape
    kk = kh * kw
    for t in prange(n * oh):
        b, y0 = t // oh, t % oh
        for ox in range(ow):
            row = t * ow + ox
            for i in range(kh):
                y = y0 * stride + i - pad
                for j in range(kw):
                    z = ox * stride + j - pad
                    col = i * kw + j
                    if 0 <= y < h and 0 <= z < w:
                        for ch in range(c):
                            cols[row, ch * kk + col] = x[b, y, z, ch]
                    else:
                        for ch in range(c):
                            cols[row, ch * kk + col] = 0


@njit(parallel=True, cache=True)
def _col2im_nhwc(cols, kh, kw, stride, pad, oh, ow, dx):
    n, h, w, c = dx.shape
    kk = kh * kw
    for t in prange(n * h):
        b, y = t // h, t % h
        for z in range(w):
            for ch in range(c):
                dx[b, y, z, ch] = 0
            for i in range(kh):              # same (i, j) order as the reference's loop
                ty = y + pad - i
                if ty < 0 or ty % stride != 0 or ty // stride >= oh:
                    continue
                for j in range(kw):
                    tz = z + pad - j
                    if tz < 0 or tz % stride != 0 or tz // stride >= ow:
                        continue
                    row = (b * oh + ty // stride) * ow + tz // stride
                    col = i * kw + j
                    for ch in range(c):
                        dx[b, y, z, ch] += cols[row, ch * kk + col]


@njit(parallel=True, cache=True)
def _maxpool_forward_nhwc(x, k, stride, out, argmax):
    # The channel loops are written as selects (a = v if take else a), not branches, so
    # LLVM vectorises them; the running argmax is kept in a 32-bit scratch row because a
    # uint8 select beside float32 values is not vectorised (9 ms -> 2.5 ms for 64x64x32x32).
    n, oh, ow, c = out.shape
    for t in prange(n * oh):
        b, y = t // oh, t % oh
        index = np.empty(c, dtype=np.int32)
        for z in range(ow):
            y0, z0 = y * stride, z * stride
            for ch in range(c):
                out[b, y, z, ch] = x[b, y0, z0, ch]
                index[ch] = 0
            for i in range(k):
                for j in range(k):
                    if i == 0 and j == 0:
                        continue
                    ij = np.int32(i * k + j)
                    for ch in range(c):
                        v = x[b, y0 + i, z0 + j, ch]
                        best = out[b, y, z, ch]
                        # strictly greater: the first maximum wins; a NaN wins like np.argmax
                        take = v > best or (v != v and best == best)
                        out[b, y, z, ch] = v if take else best
                        index[ch] = ij if take else index[ch]
            for ch in range(c):
                argmax[b, y, z, ch] = index[ch]


@njit(parallel=True, cache=True)
def _maxpool_backward_nhwc(dout, argmax, k, stride, dx):
    n, h, w, c = dx.shape
    _, oh, ow, _ = dout.shape
    for t in prange(n * h):
        b, y = t // h, t % h
        for z in range(w):
            for ch in range(c):
                dx[b, y, z, ch] = 0
            for i in range(k):               # same (i, j) order as the reference's loop
                ty = y - i
                if ty < 0 or ty % stride != 0 or ty // stride >= oh:
                    continue
                for j in range(k):
                    tz = z - j
                    if tz < 0 or tz % stride != 0 or tz // stride >= ow:
                        continue
                    py, pz = ty // stride, tz // stride
                    ij = i * k + j
                    for ch in range(c):                # a select, so it vectorises
                        g = dout[b, py, pz, ch]
                        dx[b, y, z, ch] += g if argmax[b, py, pz, ch] == ij else 0


@njit(parallel=True, cache=True)
def _relu_forward_flat(x, y, mask):
    for i in prange(x.size):
        v = x[i]
        keep = v > 0
        mask[i] = keep
        y[i] = 0 if v <= 0 else v       # NaN is not <= 0: it passes, as in the reference


@njit(parallel=True, cache=True)
def _relu_backward_flat(dout, mask, dx):
    for i in prange(dout.size):
        dx[i] = dout[i] if mask[i] else 0


# -- public functions: the reference's signatures -----------------------------------------------

def im2col(x, kh, kw, stride=1, pad=0, out=None):
    """Receptive fields of ``x`` (N, C, H, W) as rows (N*OH*OW, C*kh*kw); see reference.py."""
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, stride, pad), conv_output_size(w, kw, stride, pad)
    shape = (n * oh * ow, c * kh * kw)
    cols = _output(out, shape, x.dtype, "im2col")
    _im2col_nhwc(as_nhwc(x), kh, kw, stride, pad, oh, ow, cols)
    return cols


def _output(out, shape, dtype, who):
    if out is None:
        return np.empty(shape, dtype=dtype)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"{who}: out must be a C-contiguous {dtype} array of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    return out


def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
    """Fold rows back into an image (N, C, H, W), summing overlaps; an NCHW view of NHWC."""
    n, c, h, w = x_shape
    oh, ow = conv_output_size(h, kh, stride, pad), conv_output_size(w, kw, stride, pad)
    dx = np.empty((n, h, w, c), dtype=cols.dtype)
    _col2im_nhwc(np.ascontiguousarray(cols), kh, kw, stride, pad, oh, ow, dx)
    return nchw(dx)


def _argmax_dtype(k):
    return np.uint8 if k * k <= 256 else np.int32


def maxpool_forward(x, k=2, stride=2):
    """Max-pooling; returns ``(out, argmax)`` as NCHW views of NHWC buffers.

    ``argmax`` is compact (uint8 for windows up to 16 x 16) and holds i * k + j.
    """
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, k, stride, 0), conv_output_size(w, k, stride, 0)
    out = np.empty((n, oh, ow, c), dtype=x.dtype)
    argmax = np.empty((n, oh, ow, c), dtype=_argmax_dtype(k))
    _maxpool_forward_nhwc(as_nhwc(x), k, stride, out, argmax)
    return nchw(out), nchw(argmax)


def maxpool_backward(dout, argmax, x_shape, k=2, stride=2):
    """Route each window's gradient to its maximum (a gather over windows); NCHW view."""
    n, c, h, w = x_shape
    dx = np.empty((n, h, w, c), dtype=dout.dtype)
    _maxpool_backward_nhwc(as_nhwc(dout), as_nhwc(argmax), k, stride, dx)
    return nchw(dx)


def relu_forward(x):
    """``(max(x, 0), x > 0)`` in one pass over memory; outputs keep the layout of ``x``."""
    flat, restore, _ = memory_order(x)
    y = np.empty_like(flat)
    mask = np.empty(flat.shape, dtype=np.bool_)
    _relu_forward_flat(flat, y, mask)
    return restore(y), restore(mask)


def relu_backward(dout, mask):
    """``dout * [x > 0]`` in one pass over memory; keeps the layout of ``dout``."""
    flat, restore, perm = memory_order(dout)
    dx = np.empty_like(flat)
    _relu_backward_flat(flat, in_order(mask, perm), dx)
    return restore(dx)


def matmul(a, b, out=None):
    """``a @ b`` with one-thread BLAS GEMMs on blocks of rows (blas.py says why)."""
    return matmul_rows(a, b, out)
