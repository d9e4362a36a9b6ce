"""Per-channel work on the GPU: sums by cuBLAS, and batch norm's passes fused, in NHWC.

**Sums over rows.** A convolution's bias gradient, a Dense layer's and batch norm's four
statistics are sums of an (M, C) array over its M rows, with M = N*H*W large (262,144 for
a batch of 256 at 32x32) and C small (64). CuPy's ``sum(axis=0)`` gives such a reduction a
handful of thread blocks (C=64: 2 blocks of 512 threads), so most of the GPU idles. Here
the sum is a product with a vector of ones, which cuBLAS spreads over the whole device, in
two stages: the rows in b blocks of l ~ sqrt(M) rows (one batched GEMV, b independent
products), then the b partial sums (a second GEMV)::

    partial[k] = ones(l) @ a[k*l:(k+1)*l]        k = 0..b-1      (b, C)
    sums       = ones(b) @ partial  (+ the last M - b*l rows)    (C,)

Two stages also bound the rounding: each value passes through about l + b ~ 2 sqrt(M)
additions, not M. The sums never use TF32 (they would round the data to 10 bits).
``two_stage_sums`` is written against any array module, so it is tested with NumPy.

**Batch norm.** The normalisation (xhat and y) and the input gradient are one fused
elementwise kernel each, over the (M, C) rows of NHWC memory, with the per-channel
vectors broadcast along the rows. Their outputs are (M, C) C-contiguous, i.e. NHWC, and
are returned as NCHW views: a batch coming from a convolution stays NHWC through batch
norm (CuPy's own elementwise operators would allocate C-order, i.e. NCHW, outputs and
every later kernel would pay a transposing copy). Each kernel object is built once.

The arithmetic equals the reference's to rounding, not bit for bit: the sums are taken in
another order, and ``gamma * xhat + beta`` may be one fused multiply-add on the GPU.
"""

from __future__ import annotations

import math

import numpy as np

_ones: dict = {}            # (device id, dtype name) -> a vector of ones, grown as needed
_elementwise: dict = {}     # name -> its cupy.ElementwiseKernel, built on first use


def block_rows(m: int) -> int:
    """Rows per block of the first stage: about sqrt(M), at least 1."""
    return max(1, math.isqrt(m))


def two_stage_sums(xp, a, ones, out):
    """``out[c] = sum_i a[i, c]`` for a C-contiguous (M, C) array ``a``, by two GEMVs.

    ``ones`` is a 1-D array of ones with at least max(l, b + 1) entries; ``out`` is (C,).
    """
    m, c = a.shape
    if m == 0:
        out[...] = 0
        return out
    rows = block_rows(m)
    blocks, head = m // rows, (m // rows) * rows
    partial = xp.empty((blocks + (head < m), c), dtype=a.dtype)
    xp.matmul(ones[:rows], a[:head].reshape(blocks, rows, c), out=partial[:blocks])
    if head < m:                                   # the last m - head (< rows) rows
        xp.matmul(ones[:m - head], a[head:], out=partial[blocks])
    xp.matmul(ones[:len(partial)], partial, out=out)
    return out


def ones_for(cupy, m: int, dtype):
    """A cached CuPy vector of at least ``m`` ones of ``dtype`` on the current device."""
    key = (cupy.cuda.Device().id, np.dtype(dtype).name)
    v = _ones.get(key)
    if v is None or v.size < m:
        v = _ones[key] = cupy.ones(max(m, 1024), dtype=dtype)
    return v


def channel_sums(a, out):
    """``out`` (C,) = the sums of the rows of the CuPy (M, C) array ``a`` (exact float32)."""
    import cupy

    from minivgg.kernels.gpu import float32_compute_type
    a = cupy.ascontiguousarray(a)
    m = a.shape[0]
    ones = ones_for(cupy, max(block_rows(m), m // block_rows(m) + 1), a.dtype)
    with float32_compute_type(tf32=False):
        return two_stage_sums(cupy, a, ones, out)


# -- batch norm --------------------------------------------------------------------------

_KERNELS = {
    # name: (inputs, outputs, body); T is float or double; vectors are per channel
    "normalize": ("T x, T mean, T inv_std, T gamma, T beta", "T y, T xhat",
                  "T h = (x - mean) * inv_std; xhat = h; y = gamma * h + beta;"),
    "normalize_eval": ("T x, T mean, T inv_std, T gamma, T beta", "T y",
                       "y = gamma * ((x - mean) * inv_std) + beta;"),
    "shifted": ("T x, T shift", "T d, T d2", "T v = x - shift; d = v; d2 = v * v;"),
    "product": ("T g, T xhat", "T p", "p = g * xhat;"),
    "dx": ("T g, T xhat, T a, T b, T c", "T dx", "dx = a * g + b + c * xhat;"),
}


def kernel(name: str):
    """The ElementwiseKernel ``name`` of _KERNELS, built once per process."""
    if name not in _elementwise:
        import cupy
        inputs, outputs, body = _KERNELS[name]
        _elementwise[name] = cupy.ElementwiseKernel(inputs, outputs, body, f"minivgg_bn_{name}")
    return _elementwise[name]


def _sums(cupy, a):
    out = cupy.empty(a.shape[1], dtype=a.dtype)
    return channel_sums(a, out)


def batchnorm_statistics_rows(rows):
    """Mean and biased variance of each column of the (M, C) rows, in their dtype.

    Sums of x - shift, shift = the first row (a value of each channel, near its mean):
    the variance E[d^2] - E[d]^2 then loses no digits to a large mean.
    """
    import cupy
    m, c = rows.shape
    shift = rows[0].copy()
    d, d2 = cupy.empty((m, c), dtype=rows.dtype), cupy.empty((m, c), dtype=rows.dtype)
    kernel("shifted")(rows, shift, d, d2)                # one pass writes both
    mean_shifted = _sums(cupy, d).astype(np.float64) / m
    mean_square = _sums(cupy, d2).astype(np.float64) / m
    var = cupy.maximum(mean_square - mean_shifted * mean_shifted, 0.0)
    return (shift + mean_shifted).astype(rows.dtype), var.astype(rows.dtype)


def batchnorm_normalize_rows(rows, mean, inv_std, gamma, beta, keep_xhat: bool):
    """``(y, xhat)`` as (M, C) C-contiguous arrays (NHWC memory); xhat None if not kept."""
    import cupy
    y = cupy.empty(rows.shape, dtype=rows.dtype)
    if not keep_xhat:
        kernel("normalize_eval")(rows, mean, inv_std, gamma, beta, y)
        return y, None
    xhat = cupy.empty_like(y)
    kernel("normalize")(rows, mean, inv_std, gamma, beta, y, xhat)
    return y, xhat


def batchnorm_backward_rows(g, xh, gamma, inv_std, batch_statistics: bool):
    """``(dx rows, dgamma, dbeta)`` from the (M, C) rows of dout and xhat."""
    import cupy
    m, c = g.shape
    dbeta = _sums(cupy, g)
    dgamma = _sums(cupy, kernel("product")(g, xh))
    # dx = a * dout + b + c_ * xhat: the reference's formula with its per-channel factors
    # gathered, scale / M * (M * dout - dbeta - xhat * dgamma), as in the Numba loops.
    scale = gamma.astype(np.float64) * inv_std
    a = scale.astype(g.dtype)
    if batch_statistics:
        b = (-scale * dbeta / m).astype(g.dtype)
        c_ = (-scale * dgamma / m).astype(g.dtype)
    else:
        b = c_ = cupy.zeros(c, dtype=g.dtype)
    dx = cupy.empty(g.shape, dtype=g.dtype)
    kernel("dx")(g, xh, a, b, c_, dx)
    return dx, dgamma, dbeta
