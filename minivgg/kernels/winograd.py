"""Winograd minimal filtering F(2x2, 3x3) and F(4x4, 3x3) (Lavin & Gray, 2015): a 3x3
convolution with fewer multiplications. The reference, in plain NumPy; winograd_cpu.py
(and winograd4_cpu.py) are the same in Numba.

Applies to stride-1, 3x3, padding-1 convolutions, the only kind VGG uses. im2col + GEMM
(reference.py, layers/conv.py) stays the textbook algorithm; this is the speed path.

The idea, in one dimension: two outputs of a 3-tap filter g over four inputs d,

    y0 = d0 g0 + d1 g1 + d2 g2          6 multiplications done directly
    y1 = d1 g0 + d2 g1 + d3 g2

are also  y = Aᵀ [(G g) ⊙ (Bᵀ d)]  with 4 multiplications (⊙: elementwise product), where

    Bᵀ = [[1,  0, -1,  0],      G = [[1,    0,   0 ],     Aᵀ = [[1, 1,  1,  0],
          [0,  1,  1,  0],           [1/2, 1/2, 1/2],           [0, 1, -1, -1]]
          [0, -1,  1,  0],           [1/2,-1/2, 1/2],
          [0,  1,  0, -1]]           [0,    0,   1 ]]

Bᵀ transforms the input tile, G the filter, Aᵀ maps the 4 products back to 2 outputs.
Nested in 2-D, a 2x2 output tile from a 4x4 input tile d and a 3x3 filter g is

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A          16 multiplications instead of 36.

In a convolution layer the elementwise product also sums over input channels, and the sum
over channels of products is a matrix product. With T = N * ceil(H/2) * ceil(W/2) tiles
(4x4 input windows taken every 2 pixels of the zero-padded input; the tile grid is padded
up to even sizes and the extra outputs cut off) and the 16 positions (xi, nu) of a tile:

    V[xi,nu] = (Bᵀ d B)[xi,nu]  of every tile and channel    (16, T, C)   input transform
    U[xi,nu] = (G g Gᵀ)[xi,nu]  of every filter and channel  (16, C, F)   filter transform
    M[xi,nu] = V[xi,nu] @ U[xi,nu]                            (16, T, F)   16 GEMMs
    Y        = Aᵀ M A  of every tile and filter               (N, F, H, W) output transform

so the GEMMs do 16 T C F multiply-adds where im2col's does 36 T C F: 2.25 times fewer.

Backward: every stage is linear, so its gradient is its transpose, applied in reverse order:

    dM = A dY Aᵀ        dU = Vᵀ @ dM  ->  dW = Gᵀ dU G        (V is what forward caches)
                        dV = dM @ Uᵀ  ->  dd = B dV Bᵀ, summed back where tiles overlap

The input gradient obtained this way equals the convolution of dY with the filters rotated
by 180 degrees and their in/out channels swapped (tests check it with this very routine);
sharing dM with the weight gradient saves one transform of dY.

Larger tiles: F(4x4, 3x3). The same construction from six points (0, 1, -1, 2, -2 and
infinity) gives 6x6 matrices Bᵀ and 6x3 G and a 4x6 Aᵀ (BT4, G4, AT4 below): a 4x4 block
of outputs from a 6x6 input tile, taken every 4 pixels, with 36 multiplications instead
of 144, so the 36 GEMMs do 4x fewer multiply-adds than im2col, against F(2x2)'s 2.25x,
and the transformed tiles hold 36/16 = 2.25 values per output instead of 4. Everything
above holds with 4 -> 6 (tile side) and 2 -> 4 (output block) and 16 -> 36 (positions);
``tile_size`` picks F(4x4) wherever its tiles hold fewer values (on square maps, every
side but 1, 2, 5 and 6, where 2x2 blocks waste less of the last tile).

Rounding: for F(2x2), B and A hold only 0 and +-1 and G only 0, +-1/2 and 1, so every
transform is a few exact-ish additions; in float32 the result differs from im2col's by a
few ulps of the magnitudes summed. F(4x4)'s coefficients reach 8 (and G's 1/6, 1/24 are
not exact in binary), so its partial sums are larger and its float32 error about ten
times F(2x2)'s, still ~1e-6 of the largest output (tests/test_winograd.py states both
tolerances). The filter transforms are computed in float64 and rounded once.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)

# F(4x4, 3x3): the same construction from the points 0, 1, -1, 2, -2 (and infinity)
BT4 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
               dtype=np.float64)
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=np.float64)
AT4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], dtype=np.float64)

TRANSFORMS = {2: (BT, G, AT), 4: (BT4, G4, AT4)}    # output tile side m -> (Bᵀ, G, Aᵀ)


def applies(kernel_size: int, stride: int, padding: int) -> bool:
    """Whether Winograd computes this convolution: 3x3, stride 1, padding 1."""
    return kernel_size == 3 and stride == 1 and padding == 1


def tile_grid(h: int, w: int, m: int = 2) -> tuple[int, int]:
    """Tiles per column and per row: each tile gives an m x m block of the H x W output."""
    return -(-h // m), -(-w // m)


def tile_values(h: int, w: int, m: int) -> int:
    """Transformed values per image and channel: (m+2)² for each tile of an H x W map."""
    th, tw = tile_grid(h, w, m)
    return (m + 2) ** 2 * th * tw


def tile_size(h: int, w: int) -> int:
    """The output tile side for an H x W map: 4 (F(4x4, 3x3)) where its 6x6 tiles hold
    fewer transformed values than F(2x2)'s 4x4 tiles (3x3, 4x4 and 7x7 maps and larger),
    else 2 (a 2x2 map is one 4x4 tile). Fewer values: fewer multiply-adds in the GEMMs,
    and less memory for the transforms to read and write."""
    return 4 if tile_values(h, w, 4) < tile_values(h, w, 2) else 2


def tile_side(v) -> int:
    """The output tile side m of the tiles V ((m+2)², T, C) forward returned."""
    for m in TRANSFORMS:
        if v.shape[0] == (m + 2) ** 2:
            return m
    raise ValueError(f"winograd: tiles of shape {tuple(v.shape)}: expected (16, T, C) or "
                     "(36, T, C)")


def _matrices(m, dtype):
    return tuple(a.astype(dtype) for a in TRANSFORMS[m])


def transform_filters(w, m: int = 2):
    """U = G g Gᵀ for every filter and channel: (F, C, 3, 3) -> ((m+2)², C, F)."""
    f, c = w.shape[:2]
    g = TRANSFORMS[m][1]                       # in float64: G4 holds 1/6, 1/24
    u = g @ w.astype(np.float64) @ g.T
    return u.transpose(2, 3, 1, 0).reshape((m + 2) ** 2, c, f).astype(w.dtype)


def transform_input(x, m: int = 2):
    """V = Bᵀ d B for every (m+2)² tile d (stride m) and channel: (N, C, H, W) -> (a², T, C)."""
    n, c, h, w = x.shape
    a = m + 2
    th, tw = tile_grid(h, w, m)
    padded = np.zeros((n, c, m * th + 2, m * tw + 2), dtype=x.dtype)   # padding 1, grid too
    padded[:, :, 1:h + 1, 1:w + 1] = x
    d = sliding_window_view(padded, (a, a), axis=(2, 3))[:, :, ::m, ::m]   # (N, C, th, tw, a, a)
    bt = _matrices(m, x.dtype)[0]
    v = bt @ d @ bt.T
    return v.transpose(4, 5, 0, 2, 3, 1).reshape(a * a, n * th * tw, c)


def winograd_conv_forward(x, w, bias=None, out=None, tile=None):
    """3x3, stride-1, padding-1 convolution of ``x`` (N, C, H, W) with ``w`` (F, C, 3, 3).

    Returns ``(y, V)``: y (N, F, H, W) as im2col would compute it, and the transformed input
    tiles V ((m+2)², T, C) that the backward pass needs (written into ``out`` if given).
    ``tile``: the output tile side m, 2 or 4 (default: ``tile_size(H, W)``).
    """
    n, _, h, wd = x.shape
    f = w.shape[0]
    m = tile_size(h, wd) if tile is None else tile
    a = m + 2
    th, tw = tile_grid(h, wd, m)
    v = transform_input(x, m)
    if out is not None:
        out[...] = v
        v = out
    mm = v @ transform_filters(w, m)                                # (a², T, F)
    mm = mm.reshape(a, a, n, th, tw, f).transpose(2, 3, 4, 5, 0, 1)  # (N, th, tw, F, a, a)
    at = _matrices(m, x.dtype)[2]
    tiles = at @ mm @ at.T                                          # (N, th, tw, F, m, m)
    y = tiles.transpose(0, 3, 1, 4, 2, 5).reshape(n, f, m * th, m * tw)[:, :, :h, :wd]
    if bias is not None:
        y = y + bias.reshape(1, f, 1, 1)
    return y, v


def winograd_conv_backward(dout, v, w, x_shape, input_grad=True):
    """Gradients of the loss with respect to the input and the filters: ``(dx, dw)``.

    ``dout`` (N, F, H, W), ``v`` the tiles from forward ((m+2)², T, C; their first axis
    tells m), ``w`` (F, C, 3, 3). ``dx`` is None when ``input_grad`` is False. The bias
    gradient is dout summed; the layer computes it.
    """
    n, c, h, wd = x_shape
    f = w.shape[0]
    m = tile_side(v)
    a = m + 2
    th, tw = tile_grid(h, wd, m)
    bt, _, at = _matrices(m, v.dtype)
    dy = np.zeros((n, f, m * th, m * tw), dtype=v.dtype)          # pad the tile grid
    dy[:, :, :h, :wd] = dout
    dy = dy.reshape(n, f, th, m, tw, m).transpose(0, 2, 4, 1, 3, 5)   # (N, th, tw, F, m, m)
    dm = (at.T @ dy @ at).transpose(4, 5, 0, 1, 2, 3).reshape(a * a, n * th * tw, f)
    du = (v.transpose(0, 2, 1) @ dm).astype(np.float64)            # (a², C, F)
    g = TRANSFORMS[m][1]
    dw = (g.T @ du.reshape(a, a, c, f).transpose(3, 2, 0, 1) @ g).astype(v.dtype)
    if not input_grad:
        return None, dw
    dv = dm @ transform_filters(w, m).transpose(0, 2, 1)           # (a², T, C)
    dv = dv.reshape(a, a, n, th, tw, c).transpose(2, 5, 3, 4, 0, 1)   # (N, C, th, tw, a, a)
    dd = bt.T @ dv @ bt
    dpadded = np.zeros((n, c, m * th + 2, m * tw + 2), dtype=v.dtype)
    for i in range(a):            # the adjoint of taking tiles: overlapping tiles add up
        for j in range(a):
            dpadded[:, :, i:i + m * th:m, j:j + m * tw:m] += dd[..., i, j]
    return dpadded[:, :, 1:h + 1, 1:wd + 1], dw
