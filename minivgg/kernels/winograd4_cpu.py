"""Winograd F(4x4, 3x3) on the CPU: the six transforms of winograd_cpu.py for 6x6 tiles.

The same stages as F(2x2, 3x3) (winograd.py has the math; ``TRANSFORMS[4]`` holds the
matrices these loops multiply by): a 4x4 block of outputs from a 6x6 input tile, 36
products instead of 16 * 9 = 144, so the 36 GEMMs between the transforms do 4x fewer
multiply-adds than im2col's (F(2x2)'s 16 do 2.25x fewer). winograd_cpu.py calls these for
maps whose 6x6 tiles cover them with fewer transformed values than 4x4 tiles would.

Each 2-D transform Bᵀ d B is done in two passes through a small per-thread buffer
``half``: Bᵀ applied to each of the tile's six columns, then B to each row of the result.
The channel loop is innermost in both, so LLVM vectorises it over channels, as in the
F(2x2) loops; a single pass over all 36 values of a tile does not vectorise (too many
arrays in one loop), and ran ~4x slower. The matrices are written out row by row (_bt,
_at, ...), their integer coefficients as doublings (_x2, _x4, _x8), so float32 stays
float32. The input gradient is accumulated per image (each image on one thread): the
tiles overlap by two pixels, so B dV Bᵀ of each tile is added into a padded image.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from minivgg.backend import configure_numba_threads

configure_numba_threads()


@njit(inline="always")
def _x2(v):
    """2 v, in v's own precision (a Python int constant would promote float32 to float64)."""
    return v + v


@njit(inline="always")
def _x4(v):
    return _x2(_x2(v))


@njit(inline="always")
def _x8(v):
    return _x2(_x4(v))


@njit(inline="always")
def _bt(d0, d1, d2, d3, d4, d5):
    """Bᵀ d for a column of six."""
    return (_x4(d0 - d2) - d2 + d4, d3 + d4 - _x4(d1 + d2), _x4(d1 - d2) + d4 - d3,
            _x2(d3 - d1) + d4 - d2, _x2(d1 - d3) + d4 - d2, _x4(d1 - d3) - d3 + d5)


@njit(inline="always")
def _b(u0, u1, u2, u3, u4, u5):
    """B u for a column of six: the transpose of Bᵀ (backward)."""
    return (_x4(u0), _x4(u2 - u1 + u5) + _x2(u4 - u3), -(_x4(u0 + u1 + u2) + u0 + u3 + u4),
            u1 - u2 + _x2(u3 - u4) - _x4(u5) - u5, u0 + u1 + u2 + u3 + u4, u5)


_6, _12, _24 = 1 / 6, 1 / 12, 1 / 24      # G's fractions, multiplied (a division is slow)


@njit(inline="always")
def _g(g0, g1, g2):
    """G g for a column of three (in float64: filters are few, and 1/6 is not exact)."""
    return (g0 * 0.25, -(g0 + g1 + g2) * _6, (g1 - g0 - g2) * _6, g0 * _24 + g1 * _12 + g2 * _6,
            g0 * _24 - g1 * _12 + g2 * _6, g2 * 1.0)


@njit(inline="always")
def _gt(m0, m1, m2, m3, m4, m5):
    """Gᵀ m for a column of six: the transpose of G (the filter gradient, in float64)."""
    return (m0 * 0.25 - (m1 + m2) * _6 + (m3 + m4) * _24, (m2 - m1) * _6 + (m3 - m4) * _12,
            (m3 + m4 - m1 - m2) * _6 + m5)


@njit(inline="always")
def _at(m0, m1, m2, m3, m4, m5):
    """Aᵀ m for a column of six: four outputs."""
    p, q, r, s = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    return m0 + p + r, q + _x2(s), p + _x4(r), q + _x8(s) + m5


@njit(inline="always")
def _a(y0, y1, y2, y3):
    """A y for a column of four: the transpose of Aᵀ (backward)."""
    e, o = y0 + y2, y1 + y3
    e4, o2 = y0 + _x4(y2), _x2(y1) + _x8(y3)
    return y0, e + o, e - o, e4 + o2, e4 - o2, y3


@njit(inline="always")
def _put6(a, k, r, c, vals):
    """a[k .. k+5, r, c] = vals: one row of a transformed tile."""
    a[k, r, c], a[k + 1, r, c], a[k + 2, r, c] = vals[0], vals[1], vals[2]
    a[k + 3, r, c], a[k + 4, r, c], a[k + 5, r, c] = vals[3], vals[4], vals[5]


@njit(inline="always")
def _put_column(half, col, c, vals):
    """half[0 .. len(vals)-1, col, c] = vals: one column of a half-transformed tile."""
    for i in range(len(vals)):
        half[i, col, c] = vals[i]


@njit(parallel=True, cache=True)
def input_transform(x, th, tw, v):
    """V[6i+j, tile, c] = (Bᵀ d B)[i, j] of every 6x6 tile d (every 4 pixels) of x padded."""
    n, h, w, c = x.shape
    for t in prange(n * th):
        b, ty = t // th, t % th
        strip = np.zeros((6, 4 * tw + 2, c), dtype=x.dtype)   # image rows 4ty-1 .. 4ty+4
        for i in range(6):
            y = 4 * ty - 1 + i
            if 0 <= y < h:
                for z in range(w):
                    for ch in range(c):
                        strip[i, z + 1, ch] = x[b, y, z, ch]
        half = np.empty((6, 6, c), dtype=x.dtype)             # Bᵀ d of one tile
        for tx in range(tw):
            row, z = t * tw + tx, 4 * tx
            for col in range(6):                              # Bᵀ d: column by column
                for ch in range(c):
                    _put_column(half, col, ch, _bt(strip[0, z + col, ch], strip[1, z + col, ch],
                                                   strip[2, z + col, ch], strip[3, z + col, ch],
                                                   strip[4, z + col, ch], strip[5, z + col, ch]))
            for i in range(6):                                # then (Bᵀ d) B: row by row
                for ch in range(c):
                    _put6(v, 6 * i, row, ch, _bt(half[i, 0, ch], half[i, 1, ch], half[i, 2, ch],
                                                 half[i, 3, ch], half[i, 4, ch], half[i, 5, ch]))


@njit(parallel=True, cache=True)
def filter_transform(w, u):
    """U[6i+j, c, f] = (G g Gᵀ)[i, j] of every 3x3 filter g = w[f, c]."""
    f_, c_ = w.shape[0], w.shape[1]
    for c in prange(c_):
        half = np.empty((6, 3, f_))                            # G g of every filter
        for col in range(3):                                   # G g: column by column
            for f in range(f_):
                _put_column(half, col, f, _g(w[f, c, 0, col], w[f, c, 1, col],
                                             w[f, c, 2, col]))
        for i in range(6):                                     # then (G g) Gᵀ: row by row
            for f in range(f_):
                _put6(u, 6 * i, c, f, _g(half[i, 0, f], half[i, 1, f], half[i, 2, f]))


@njit(parallel=True, cache=True)
def output_transform(m, bias, th, tw, y):
    """y (N, H, W, F) = Aᵀ M A + bias for every tile; the rows and columns past H, W dropped."""
    n, h, w, f_ = y.shape
    for t in prange(n * th):
        b, ty = t // th, t % th
        oy = 4 * ty
        rows = min(4, h - oy)
        half = np.empty((4, 6, f_), dtype=y.dtype)            # Aᵀ M of one tile
        for tx in range(tw):
            row, oz = t * tw + tx, 4 * tx
            cols = min(4, w - oz)
            for col in range(6):                              # Aᵀ M: column by column
                for f in range(f_):
                    _put_column(half, col, f, _at(m[col, row, f], m[6 + col, row, f],
                                                  m[12 + col, row, f], m[18 + col, row, f],
                                                  m[24 + col, row, f], m[30 + col, row, f]))
            for i in range(rows):                             # then (Aᵀ M) A: row by row
                if cols == 4:
                    for f in range(f_):
                        y[b, oy + i, oz, f], y[b, oy + i, oz + 1, f], y[b, oy + i, oz + 2, f], \
                            y[b, oy + i, oz + 3, f] = _plus(bias[f], _at(
                                half[i, 0, f], half[i, 1, f], half[i, 2, f], half[i, 3, f],
                                half[i, 4, f], half[i, 5, f]))
                else:                                         # a tile past the right edge
                    for f in range(f_):
                        out = _at(half[i, 0, f], half[i, 1, f], half[i, 2, f], half[i, 3, f],
                                  half[i, 4, f], half[i, 5, f])
                        for j in range(cols):
                            y[b, oy + i, oz + j, f] = out[j] + bias[f]


@njit(inline="always")
def _plus(b, vals):
    return vals[0] + b, vals[1] + b, vals[2] + b, vals[3] + b


@njit(parallel=True, cache=True)
def output_grad_transform(dy, th, tw, dm):
    """dM[6i+j, tile, f] = (A dY Aᵀ)[i, j] of every 4x4 tile of dy (N, H, W, F), 0 past H, W."""
    n, h, w, f_ = dy.shape
    for t in prange(n * th):
        b, ty = t // th, t % th
        oy = 4 * ty
        half = np.empty((6, 4, f_), dtype=dy.dtype)           # A dY of one tile
        edge = np.zeros((4, 4, f_), dtype=dy.dtype)           # a tile past the edge, padded
        for tx in range(tw):
            row, oz = t * tw + tx, 4 * tx
            src, sy, sz = dy[b], oy, oz
            if oy + 4 > h or oz + 4 > w:
                edge[...] = 0
                edge[:min(4, h - oy), :min(4, w - oz)] = dy[b, oy:oy + 4, oz:oz + 4]
                src, sy, sz = edge, 0, 0
            for col in range(4):                              # A dY: column by column
                for f in range(f_):
                    _put_column(half, col, f, _a(src[sy, sz + col, f], src[sy + 1, sz + col, f],
                                                 src[sy + 2, sz + col, f],
                                                 src[sy + 3, sz + col, f]))
            for i in range(6):                                # then (A dY) Aᵀ: row by row
                for f in range(f_):
                    _put6(dm, 6 * i, row, f, _a(half[i, 0, f], half[i, 1, f], half[i, 2, f],
                                                half[i, 3, f]))


@njit(parallel=True, cache=True)
def filter_grad_transform(du, dw):
    """dw[f, c] = Gᵀ dU G: the transpose of the filter transform."""
    f_, c_ = dw.shape[0], dw.shape[1]
    for c in prange(c_):
        half = np.empty((6, 3, f_))                            # dU G of every filter
        for i in range(6):                                     # dU G: row by row
            for f in range(f_):
                r = _gt(du[6 * i, c, f], du[6 * i + 1, c, f], du[6 * i + 2, c, f],
                        du[6 * i + 3, c, f], du[6 * i + 4, c, f], du[6 * i + 5, c, f])
                half[i, 0, f], half[i, 1, f], half[i, 2, f] = r[0], r[1], r[2]
        for col in range(3):                                   # then Gᵀ (dU G): by column
            for f in range(f_):
                r = _gt(half[0, col, f], half[1, col, f], half[2, col, f], half[3, col, f],
                        half[4, col, f], half[5, col, f])
                dw[f, c, 0, col], dw[f, c, 1, col], dw[f, c, 2, col] = r[0], r[1], r[2]


@njit(parallel=True, cache=True)
def input_grad(dv, th, tw, dx):
    """dx (N, H, W, C): B dV Bᵀ of every tile, added up where the 6x6 tiles overlap."""
    n, h, w, c = dx.shape
    for b in prange(n):
        acc = np.zeros((4 * th + 2, 4 * tw + 2, c), dtype=dx.dtype)   # the padded image
        half = np.empty((6, 6, c), dtype=dx.dtype)                    # dV Bᵀ of one tile
        for ty in range(th):
            for tx in range(tw):
                row, oy, oz = (b * th + ty) * tw + tx, 4 * ty, 4 * tx
                for i in range(6):                            # dV Bᵀ: row by row
                    for ch in range(c):
                        r = _b(dv[6 * i, row, ch], dv[6 * i + 1, row, ch],
                               dv[6 * i + 2, row, ch], dv[6 * i + 3, row, ch],
                               dv[6 * i + 4, row, ch], dv[6 * i + 5, row, ch])
                        for j in range(6):
                            half[j, i, ch] = r[j]
                for j in range(6):                            # then B (dV Bᵀ), added in
                    for ch in range(c):
                        r = _b(half[j, 0, ch], half[j, 1, ch], half[j, 2, ch], half[j, 3, ch],
                               half[j, 4, ch], half[j, 5, ch])
                        for i in range(6):
                            acc[oy + i, oz + j, ch] += r[i]
        for y in range(h):
            for z in range(w):
                for ch in range(c):
                    dx[b, y, z, ch] = acc[y + 1, z + 1, ch]
