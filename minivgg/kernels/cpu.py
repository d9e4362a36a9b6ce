"""Numba kernels for the CPU: the loops behind minivgg.kernels, compiled and parallel.

These are the *loops* only: api.py checks every argument, allocates the outputs and makes
the NCHW views, then calls a function here on arrays it trusts (a loop indexes raw memory;
called directly with a wrong shape it would read and write outside its arrays). Results
equal the reference kernels' (tests/test_kernels.py checks it). What differs is the memory
layout behind the logical NCHW arrays (see layout.py): every loop here reads and writes
C-contiguous NHWC buffers, so

- the output of a convolution's GEMM, already NHWC, flows through ReLU and pooling
  without a single transpose, and the arrays returned are NCHW *views* of NHWC memory;
- the innermost loop of every kernel runs over channels, which are contiguous.

Design rules, each for a reason found on the benchmark (benchmarks/results/):

- ``parallel=True`` with ``prange`` over the batch (times rows, so a batch of one still
  splits); ``cache=True`` so a warm start loads compiled code instead of recompiling.
- col2im and max-pool backward are *gathers*: each input pixel sums the column entries
  (window gradients) that read it. No two threads write the same place, so no atomics and
  no separate zero-fill pass (each pixel's channels start at zero in cache, then add up);
  and the sum runs in the reference's (i, j) order, starting from zero, so the result is
  bit-for-bit the reference's.
- No fastmath: it would let LLVM reorder sums and change results.
- The GEMMs stay in NumPy (OpenBLAS, shared out among threads by blas.py).
- Freed arrays stay in the process (allocator.py): a step's fresh arrays would otherwise
  fault in their pages again every step.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from minivgg.backend import configure_numba_threads
from minivgg.kernels.allocator import keep_freed_memory
from minivgg.kernels.blas import matmul_rows

configure_numba_threads()  # before the first parallel kernel runs
keep_freed_memory()        # each step's arrays reuse the last step's pages (allocator.py)

__all__ = ["im2col_nhwc", "im2col_planes", "col2im_nhwc", "maxpool_forward_nhwc",
           "maxpool_backward_nhwc", "relu_forward_flat", "relu_backward_flat", "matmul",
           "MAX_POOL_WINDOW",
           "channel_sums", "channel_moments_rows", "channel_grad_sums_rows",
           "batchnorm_normalize_rows", "batchnorm_dx_rows"]

MAX_POOL_WINDOW = 46340    # argmax is uint8 up to 16 x 16, else int32: i * k + j < 2**31

# -- compiled loops (all on C-contiguous NHWC arrays) -----------------------------------------

FEW_CHANNELS = 8         # below this, im2col writes each row in order (faster for RGB input)


def im2col_nhwc(x, kh, kw, stride, pad, oh, ow, cols):
    """cols (N*OH*OW, C*kh*kw) from x (N, H, W, C): one of two loops, by channel count."""
    loop = _im2col_in_column_order if x.shape[3] < FEW_CHANNELS else _im2col_by_channels
    loop(x, kh, kw, stride, pad, oh, ow, cols)


@njit(parallel=True, cache=True)
def _im2col_by_channels(x, kh, kw, stride, pad, oh, ow, cols):
    # For each tap (i, j), the pixel's C channels are contiguous in x: read them in a row.
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
def _im2col_in_column_order(x, kh, kw, stride, pad, oh, ow, cols):
    # The same columns, each row written left to right (channel, then i, then j): with 3
    # channels the loop above writes 3 values 9 apart per tap, this one a row in sequence.
    n, h, w, c = x.shape
    for t in prange(n * oh):
        b, y0 = t // oh, t % oh
        for ox in range(ow):
            row = t * ow + ox
            top, left = y0 * stride - pad, ox * stride - pad
            interior = top >= 0 and top + kh <= h and left >= 0 and left + kw <= w
            col = 0
            for ch in range(c):
                for i in range(kh):
                    y = top + i
                    for j in range(kw):
                        z = left + j
                        if interior or (0 <= y < h and 0 <= z < w):
                            cols[row, col] = x[b, y, z, ch]
                        else:
                            cols[row, col] = 0
                        col += 1


@njit(cache=True, inline="always")
def _inside(shift, stride, size, out_size):
    """[lo, hi): the outputs o whose input o * stride + shift lies in [0, size)."""
    lo = min(out_size, max(0, (stride - 1 - shift) // stride))
    hi = max(lo, min(out_size, (size - 1 - shift) // stride + 1))
    return lo, hi


@njit(parallel=True, cache=True)
def im2col_planes(x, kh, kw, stride, pad, oh, ow, planes):
    """planes (C*kh*kw, N*OH*OW), im2col's matrix transposed, from x (N, C, H, W) in NCHW
    memory. Row (ch, i, j) is input plane ch shifted by (i, j), so each output row of an
    image is one contiguous run of OW values: copies LLVM vectorises, where im2col's rows
    of 27 values (3 channels) are written one value at a time."""
    n, c, h, w = x.shape
    for t in prange(n * oh):
        b, y0 = t // oh, t % oh
        run = t * ow
        row = 0
        for ch in range(c):
            for i in range(kh):
                y = y0 * stride + i - pad
                for j in range(kw):
                    dst = planes[row, run:run + ow]
                    lo, hi = _inside(j - pad, stride, w, ow) if 0 <= y < h else (0, 0)
                    dst[:lo] = 0
                    if stride == 1:          # a slice copy: contiguous on both sides
                        dst[lo:hi] = x[b, ch, y, lo + j - pad:hi + j - pad]
                    else:
                        for ox in range(lo, hi):
                            dst[ox] = x[b, ch, y, ox * stride + j - pad]
                    dst[hi:] = 0
                    row += 1


@njit(parallel=True, cache=True)
def col2im_nhwc(cols, kh, kw, stride, pad, oh, ow, dx):
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
def maxpool_forward_nhwc(x, k, stride, out, argmax):
    # The channel loops are written as selects (a = v if take else a), not branches, so
    # LLVM vectorises them; the running argmax is kept in a 32-bit scratch row because a
    # uint8 select beside float32 values is not vectorised (faster on the benchmark:
    # benchmarks/results/amd-epyc-2core-2026-11-25-maxpool-select.md).
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
def maxpool_backward_nhwc(dout, argmax, k, stride, dx):
    n, h, w, c = dx.shape
    _, oh, ow, _ = dout.shape
    if k == stride:
        # Windows that tile the image (VGG's 2x2, stride 2): each pixel is in at most one
        # window, so each window writes its own k x k pixels, the gradient at its argmax
        # and 0 elsewhere; the rows and columns past the last window get 0. Six times
        # faster than the gather below, which finds each pixel's windows by division.
        for t in prange(n * oh):
            b, py = t // oh, t % oh
            for i in range(k):
                y = py * k + i
                for pz in range(ow):
                    for j in range(k):
                        ij = i * k + j
                        for ch in range(c):            # a select, so it vectorises
                            g = dout[b, py, pz, ch]
                            dx[b, y, pz * k + j, ch] = g if argmax[b, py, pz, ch] == ij else 0
                for z in range(ow * k, w):
                    for ch in range(c):
                        dx[b, y, z, ch] = 0
            if py == oh - 1:
                for y in range(oh * k, h):
                    for z in range(w):
                        for ch in range(c):
                            dx[b, y, z, ch] = 0
        return
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
def relu_forward_flat(x, y, mask):
    for i in prange(x.size):
        v = x[i]
        keep = v > 0
        mask[i] = keep
        y[i] = 0 if v <= 0 else v       # NaN is not <= 0: it passes, as in the reference


@njit(parallel=True, cache=True)
def relu_backward_flat(dout, mask, dx):
    for i in prange(dout.size):
        dx[i] = dout[i] if mask[i] else 0


# -- batch norm: rows (M, C) of NHWC memory, one channel per column --------------------------
#
# Statistics and gradient sums are per-column sums over the M = N*H*W rows. Each of
# ``sums.shape[0]`` blocks of rows is summed by one thread into its own float64 row of
# ``sums`` (no two threads write one place); batch_norm.py adds the blocks up. Sums run in
# float64 even for float32 data. The moments are taken of x - shift, with shift one value
# of each channel (close to its mean), so the one-pass variance E[(x-s)^2] - E[x-s]^2 does
# not cancel catastrophically as E[x^2] - E[x]^2 can when the mean is large.

@njit(parallel=True, cache=True)
def channel_sums_rows(a, sums):
    """sums[t] = the column sums of block t of the rows of ``a`` (M, C), in float64."""
    m, c = a.shape
    blocks = sums.shape[0]
    step = (m + blocks - 1) // blocks
    for t in prange(blocks):
        s = sums[t]
        s[:] = 0.0
        for i in range(t * step, min(m, (t + 1) * step)):
            for ch in range(c):
                s[ch] += a[i, ch]


SMALL_SUM = 1 << 16      # entries below which NumPy's own sum beats a parallel launch
SUM_BLOCKS = 64          # more blocks than cores, as batch_norm.py's


def channel_sums(a, out=None):
    """The column sums of ``a`` (M, C): per-block float64 sums in parallel, then added up
    (the bias gradients). Small or strided arrays take NumPy's sum (the reference's)."""
    if a.size < SMALL_SUM or not a.flags.c_contiguous:
        return np.sum(a, axis=0, out=out)
    sums = np.empty((min(SUM_BLOCKS, a.shape[0]), a.shape[1]), dtype=np.float64)
    channel_sums_rows(a, sums)
    total = sums.sum(axis=0)
    if out is None:
        return total.astype(a.dtype)
    out[...] = total
    return out


@njit(parallel=True, cache=True)
def channel_moments_rows(x, shift, sums):
    """sums[t, 0] = sum of (x - shift), sums[t, 1] = sum of (x - shift)^2 over block t."""
    m, c = x.shape
    blocks = sums.shape[0]
    step = (m + blocks - 1) // blocks
    for t in prange(blocks):
        s1, s2 = sums[t, 0], sums[t, 1]
        s1[:] = 0.0
        s2[:] = 0.0
        for i in range(t * step, min(m, (t + 1) * step)):
            for ch in range(c):
                v = np.float64(x[i, ch]) - shift[ch]
                s1[ch] += v
                s2[ch] += v * v


@njit(inline="always")
def _relu_passes(h, gamma, beta, relu):
    """Whether the ReLU fused after batch norm let gamma * h + beta through (always, if the
    ReLU is not fused): the mask it used, recomputed from xhat by the same arithmetic."""
    return not relu or gamma * h + beta > 0


@njit(parallel=True, cache=True)
def channel_grad_sums_rows(dout, xhat, gamma, beta, relu, sums):
    """sums[t, 0] = sum of dout (dbeta), sums[t, 1] = sum of dout * xhat (dgamma), block t;
    with ``relu``, dout counts only where the fused ReLU passed the value."""
    m, c = dout.shape
    blocks = sums.shape[0]
    step = (m + blocks - 1) // blocks
    for t in prange(blocks):
        s1, s2 = sums[t, 0], sums[t, 1]
        s1[:] = 0.0
        s2[:] = 0.0
        for i in range(t * step, min(m, (t + 1) * step)):
            for ch in range(c):
                h = xhat[i, ch]
                g = np.float64(dout[i, ch]) if _relu_passes(h, gamma[ch], beta[ch], relu) \
                    else 0.0
                s1[ch] += g
                s2[ch] += g * h


@njit(parallel=True, cache=True)
def batchnorm_normalize_rows(x, mean, inv_std, gamma, beta, relu, y, xhat):
    """xhat = (x - mean) * inv_std, then y = gamma * xhat + beta, and y = max(y, 0) if
    ``relu`` (the ReLU fused: one pass instead of two). Pass y as xhat to skip it."""
    m, c = x.shape
    for i in prange(m):
        for ch in range(c):
            h = (x[i, ch] - mean[ch]) * inv_std[ch]
            xhat[i, ch] = h
            v = gamma[ch] * h + beta[ch]
            y[i, ch] = 0 if relu and v <= 0 else v    # NaN is not <= 0: it passes, as in ReLU


@njit(parallel=True, cache=True)
def batchnorm_dx_rows(dout, xhat, gamma, beta, relu, a, b, c_, dx):
    """dx = a * dout + b + c_ * xhat, per column (batch_norm.py derives a, b, c_); with
    ``relu``, dout is 0 where the fused ReLU cut the value (the a * dout term drops)."""
    m, c = dout.shape
    for i in prange(m):
        for ch in range(c):
            h = xhat[i, ch]
            if _relu_passes(h, gamma[ch], beta[ch], relu):
                dx[i, ch] = a[ch] * dout[i, ch] + b[ch] + c_[ch] * h
            else:                               # the same sum with a * 0 = 0 left out
                dx[i, ch] = b[ch] + c_[ch] * h


def matmul(a, b, out, bias=None):
    """out = a @ b (+ bias) with one-thread BLAS GEMMs on blocks of rows (blas.py says why)."""
    return matmul_rows(a, b, out, bias)
