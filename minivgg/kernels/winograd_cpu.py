"""Winograd convolution on the CPU: the transforms in Numba, the GEMMs in BLAS.

The same computation, and the same results (to rounding), as winograd.py, whose docstring
has the math. As in cpu.py, these are the loops only: api.py checks the arguments and
allocates what is returned (y, V, dx, dw); ``winograd_forward`` and ``winograd_backward``
run the stages on arrays they trust, for the tile size V's shape tells: F(2x2, 3x3), whose
transforms are below, or F(4x4, 3x3), whose transforms are in winograd4_cpu.py. The
transforms are compiled loops over C-contiguous NHWC memory (layout.py); the 16 (or 36)
matrix products in between are BLAS GEMMs on (16, T, .) stacks, shared out among threads
as whole GEMMs (blas.py: faster on a busy machine than 16 multi-threaded GEMMs).

- Tiles are numbered row = (n, ty, tx); the innermost loop of every transform runs over
  channels, which are contiguous in NHWC images and in the (16, T, C) tile stacks alike.
- The input transform first copies the four image rows a tile row needs into a small
  zero-padded strip (per thread, in cache), so the arithmetic has no border cases.
- The input gradient is a gather: each pixel sums (B dV Bᵀ)[i, j] over the (at most four)
  tiles that cover it, so no two threads write the same place.
- The filter transform U and the GEMM outputs M, dM, dU and dV never leave a call: they
  live in the thread's workspace (workspace.py), reused from call to call, because fresh
  arrays of tens of megabytes cost page faults every step. M and dM share one buffer.
- No fastmath (it would let LLVM reorder sums).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
from numba import njit, prange

from minivgg.backend import configure_numba_threads
from minivgg.kernels.blas import matmul_stack
from minivgg.kernels.winograd import tile_grid, tile_side
from minivgg.kernels.workspace import thread_workspace

configure_numba_threads()

__all__ = ["winograd_forward", "winograd_backward"]


@njit(inline="always")
def _bt(d0, d1, d2, d3):
    """Bᵀ d for a column of four: the input transform along one axis."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(inline="always")
def _g(g0, g1, g2):
    """G g for a column of three: the filter transform along one axis."""
    return g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2


@njit(inline="always")
def _at(m0, m1, m2, m3):
    """Aᵀ m for a column of four: the output transform along one axis."""
    return m0 + m1 + m2, m1 - m2 - m3


@njit(inline="always")
def _a(y0, y1):
    """A y for a column of two: the transpose of Aᵀ (used by backward)."""
    return y0, y0 + y1, y0 - y1, -y1


@njit(inline="always")
def _put4(a, k, r, c, vals):
    """a[k .. k+3, r, c] = vals: one row of a transformed tile."""
    a[k, r, c], a[k + 1, r, c], a[k + 2, r, c], a[k + 3, r, c] = vals


@njit(parallel=True, cache=True)
def _input_transform(x, th, tw, v):
    """V[4i+j, tile, c] = (Bᵀ d B)[i, j] of every 4x4 tile d of x (N, H, W, C) padded by 1."""
    n, h, w, c = x.shape
    for t in prange(n * th):
        b, ty = t // th, t % th
        strip = np.zeros((4, 2 * tw + 2, c), dtype=x.dtype)   # image rows 2ty-1 .. 2ty+2
        for i in range(4):
            y = 2 * ty - 1 + i
            if 0 <= y < h:
                for z in range(w):
                    for ch in range(c):
                        strip[i, z + 1, ch] = x[b, y, z, ch]
        for tx in range(tw):
            row, z = t * tw + tx, 2 * tx
            for ch in range(c):
                # Bᵀ d: each of the tile's four columns, then d B: each resulting row
                a0, a1, a2, a3 = _bt(strip[0, z, ch], strip[1, z, ch], strip[2, z, ch],
                                     strip[3, z, ch])
                b0, b1, b2, b3 = _bt(strip[0, z + 1, ch], strip[1, z + 1, ch],
                                     strip[2, z + 1, ch], strip[3, z + 1, ch])
                c0, c1, c2, c3 = _bt(strip[0, z + 2, ch], strip[1, z + 2, ch],
                                     strip[2, z + 2, ch], strip[3, z + 2, ch])
                e0, e1, e2, e3 = _bt(strip[0, z + 3, ch], strip[1, z + 3, ch],
                                     strip[2, z + 3, ch], strip[3, z + 3, ch])
                _put4(v, 0, row, ch, _bt(a0, b0, c0, e0))
                _put4(v, 4, row, ch, _bt(a1, b1, c1, e1))
                _put4(v, 8, row, ch, _bt(a2, b2, c2, e2))
                _put4(v, 12, row, ch, _bt(a3, b3, c3, e3))


@njit(parallel=True, cache=True)
def _filter_transform(w, u):
    """U[4i+j, c, f] = (G g Gᵀ)[i, j] of every 3x3 filter g = w[f, c]."""
    f_, c_ = w.shape[0], w.shape[1]
    for c in prange(c_):
        for f in range(f_):
            # G g: the three columns; then each row of the result times Gᵀ
            a0, a1, a2, a3 = _g(w[f, c, 0, 0], w[f, c, 1, 0], w[f, c, 2, 0])
            b0, b1, b2, b3 = _g(w[f, c, 0, 1], w[f, c, 1, 1], w[f, c, 2, 1])
            c0, c1, c2, c3 = _g(w[f, c, 0, 2], w[f, c, 1, 2], w[f, c, 2, 2])
            _put4(u, 0, c, f, _g(a0, b0, c0))
            _put4(u, 4, c, f, _g(a1, b1, c1))
            _put4(u, 8, c, f, _g(a2, b2, c2))
            _put4(u, 12, c, f, _g(a3, b3, c3))


@njit(parallel=True, cache=True)
def _output_transform(m, bias, th, tw, y):
    """y (N, H, W, F) = Aᵀ M A + bias for every tile; the rows and columns past H, W dropped."""
    n, h, w, f_ = y.shape
    for t in prange(n * th):
        b, ty = t // th, t % th
        oy = 2 * ty
        for tx in range(tw):
            row, oz = t * tw + tx, 2 * tx
            down, right = oy + 1 < h, oz + 1 < w
            for f in range(f_):
                a0, a1 = _at(m[0, row, f], m[4, row, f], m[8, row, f], m[12, row, f])
                b0, b1 = _at(m[1, row, f], m[5, row, f], m[9, row, f], m[13, row, f])
                c0, c1 = _at(m[2, row, f], m[6, row, f], m[10, row, f], m[14, row, f])
                e0, e1 = _at(m[3, row, f], m[7, row, f], m[11, row, f], m[15, row, f])
                y00, y01 = _at(a0, b0, c0, e0)
                y[b, oy, oz, f] = y00 + bias[f]
                if right:
                    y[b, oy, oz + 1, f] = y01 + bias[f]
                if down:
                    y10, y11 = _at(a1, b1, c1, e1)
                    y[b, oy + 1, oz, f] = y10 + bias[f]
                    if right:
                        y[b, oy + 1, oz + 1, f] = y11 + bias[f]


@njit(parallel=True, cache=True)
def _output_grad_transform(dy, th, tw, dm):
    """dM[4i+j, tile, f] = (A dY Aᵀ)[i, j] of every 2x2 tile of dy (N, H, W, F), 0 past H, W."""
    n, h, w, f_ = dy.shape
    for t in prange(n * th):
        b, ty = t // th, t % th
        oy = 2 * ty
        oy1 = min(oy + 1, h - 1)                  # a valid row to read; masked below
        for tx in range(tw):
            row, oz = t * tw + tx, 2 * tx
            oz1 = min(oz + 1, w - 1)
            right, down = oz + 1 < w, oy + 1 < h
            for f in range(f_):
                y00 = dy[b, oy, oz, f]
                y01 = dy[b, oy, oz1, f] if right else 0.0
                y10 = dy[b, oy1, oz, f] if down else 0.0
                y11 = dy[b, oy1, oz1, f] if right and down else 0.0
                a0, a1, a2, a3 = _a(y00, y10)     # A dY: the two columns
                b0, b1, b2, b3 = _a(y01, y11)
                _put4(dm, 0, row, f, _a(a0, b0))   # then each row times Aᵀ
                _put4(dm, 4, row, f, _a(a1, b1))
                _put4(dm, 8, row, f, _a(a2, b2))
                _put4(dm, 12, row, f, _a(a3, b3))


@njit(inline="always")
def _gt(m0, m1, m2, m3):
    """Gᵀ m for a column of four: the transpose of the filter transform along one axis."""
    return m0 + 0.5 * (m1 + m2), 0.5 * (m1 - m2), 0.5 * (m1 + m2) + m3


@njit(parallel=True, cache=True)
def _filter_grad_transform(du, dw):
    """dw[f, c] = Gᵀ dU G: the transpose of the filter transform."""
    f_, c_ = dw.shape[0], dw.shape[1]
    for c in prange(c_):
        for f in range(f_):
            # Gᵀ dU: the four columns; then each row of the result times G
            a0, a1, a2 = _gt(du[0, c, f], du[4, c, f], du[8, c, f], du[12, c, f])
            b0, b1, b2 = _gt(du[1, c, f], du[5, c, f], du[9, c, f], du[13, c, f])
            c0, c1, c2 = _gt(du[2, c, f], du[6, c, f], du[10, c, f], du[14, c, f])
            e0, e1, e2 = _gt(du[3, c, f], du[7, c, f], du[11, c, f], du[15, c, f])
            dw[f, c, 0, 0], dw[f, c, 0, 1], dw[f, c, 0, 2] = _gt(a0, b0, c0, e0)
            dw[f, c, 1, 0], dw[f, c, 1, 1], dw[f, c, 1, 2] = _gt(a1, b1, c1, e1)
            dw[f, c, 2, 0], dw[f, c, 2, 1], dw[f, c, 2, 2] = _gt(a2, b2, c2, e2)


# B's rows as (column index, sign) lists: (B dV Bᵀ)[i, j] = sum B[i,k] B[j,l] dV[k, l]
_B = np.array([[1, 0, 0, 0], [0, 1, -1, 1], [-1, 1, 1, 0], [0, 0, 0, -1]], dtype=np.float64)


@njit(parallel=True, cache=True)
def _input_grad_gather(dv, th, tw, bmat, dx):
    """dx (N, H, W, C): each pixel sums (B dV Bᵀ)[i, j] over the tiles that cover it."""
    n, h, w, c = dx.shape
    for t in prange(n * h):
        b, y = t // h, t % h
        for z in range(w):
            for ch in range(c):
                dx[b, y, z, ch] = 0
            for u in range(2):                       # padded row y+1 = 2 ty + i
                ty, i = (y + 1) // 2 - u, (y + 1) % 2 + 2 * u
                if ty < 0 or ty >= th:
                    continue
                for s in range(2):
                    tx, j = (z + 1) // 2 - s, (z + 1) % 2 + 2 * s
                    if tx < 0 or tx >= tw:
                        continue
                    row = (b * th + ty) * tw + tx
                    for k in range(4):
                        for l in range(4):
                            coef = bmat[i, k] * bmat[j, l]
                            if coef != 0:
                                for ch in range(c):
                                    dx[b, y, z, ch] += coef * dv[4 * k + l, row, ch]


# -- the two passes: arguments checked and results allocated by api.py ---------------------

def _gather_f2(dv, th, tw, dx):
    _input_grad_gather(dv, th, tw, _B.astype(dv.dtype), dx)


@functools.cache
def _stages(m):
    """The transforms for output tiles of side m: F(2x2, 3x3) above, F(4x4, 3x3) in
    winograd4_cpu.py; each module's functions take the same arguments."""
    if m == 2:
        return SimpleNamespace(input=_input_transform, filters=_filter_transform,
                               output=_output_transform, output_grad=_output_grad_transform,
                               filter_grad=_filter_grad_transform, input_grad=_gather_f2)
    from minivgg.kernels import winograd4_cpu as f4
    return SimpleNamespace(input=f4.input_transform, filters=f4.filter_transform,
                           output=f4.output_transform, output_grad=f4.output_grad_transform,
                           filter_grad=f4.filter_grad_transform, input_grad=f4.input_grad)


def _filters(w, m, stages):
    """U ((m+2)², C, F) = G g Gᵀ of every filter, in the thread's workspace."""
    f, c = w.shape[:2]
    u = thread_workspace().buffer("winograd.U", ((m + 2) ** 2, c, f), w.dtype)
    stages.filters(w, u)
    return u


def winograd_forward(x, w, bias, v, y):
    """y (N, H, W, F) = conv(x, w) + bias, and V ((m+2)², T, C) the input tiles backward
    needs; V's shape tells the tile side m (api.py allocated it for ``tile_size``).

    x (N, H, W, C) and w (F, C, 3, 3) C-contiguous; bias (F,); v and y written in full.
    """
    n, h, wd, _ = x.shape
    f = w.shape[0]
    m = tile_side(v)
    stages = _stages(m)
    th, tw = tile_grid(h, wd, m)
    stages.input(x, th, tw, v)
    mm = thread_workspace().buffer("winograd.M", (v.shape[0], n * th * tw, f), x.dtype)
    matmul_stack(v, _filters(w, m, stages), mm)
    stages.output(mm, bias, th, tw, y)


def winograd_backward(dout, v, w, dw, dx):
    """dw (F, C, 3, 3) and, unless ``dx`` is None, dx (N, H, W, C), from dout (N, H, W, F)."""
    n, h, wd, f = dout.shape
    c = v.shape[2]
    m = tile_side(v)
    stages = _stages(m)
    th, tw = tile_grid(h, wd, m)
    scratch = thread_workspace()
    # dM takes the memory of forward's M (same shape; M died in the output transform):
    # one buffer of the largest layer's tiles fewer in a training step.
    dm = scratch.buffer("winograd.M", (v.shape[0], n * th * tw, f), v.dtype)
    stages.output_grad(dout, th, tw, dm)
    du = scratch.buffer("winograd.dU", (v.shape[0], c, f), v.dtype)
    matmul_stack(v.transpose(0, 2, 1), dm, du)
    stages.filter_grad(du, dw)
    if dx is None:
        return
    dv = scratch.buffer("winograd.dV", (v.shape[0], n * th * tw, c), v.dtype)
    matmul_stack(dm, _filters(w, m, stages).transpose(0, 2, 1), dv)
    stages.input_grad(dv, th, tw, dx)
