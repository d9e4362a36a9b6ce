"""Winograd minimal filtering F(2x2, 3x3) (Lavin & Gray, 2015): a 3x3 convolution with fewer
multiplications. The reference, in plain NumPy; winograd_cpu.py is the same in Numba.

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

Rounding: B and A hold only 0 and +-1 and G only 0, +-1/2 and 1, so every transform is a
few exact-ish additions; in float32 the result differs from im2col's by a few ulps of the
magnitudes summed (tests/test_winograd.py states the tolerance).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def applies(kernel_size: int, stride: int, padding: int) -> bool:
    """Whether F(2x2, 3x3) computes this convolution: 3x3, stride 1, padding 1."""
    return kernel_size == 3 and stride == 1 and padding == 1


def tile_grid(h: int, w: int) -> tuple[int, int]:
    """Tiles per column and per row: each tile gives a 2x2 block of the H x W output."""
    return (h + 1) // 2, (w + 1) // 2


def transform_filters(w):
    """U = G g Gᵀ for every filter and channel: (F, C, 3, 3) -> (16, C, F)."""
    f, c = w.shape[:2]
    g = G.astype(w.dtype)
    return (g @ w @ g.T).transpose(2, 3, 1, 0).reshape(16, c, f)


def transform_input(x):
    """V = Bᵀ d B for every 4x4 tile d (stride 2) and channel: (N, C, H, W) -> (16, T, C)."""
    n, c, h, w = x.shape
    th, tw = tile_grid(h, w)
    padded = np.zeros((n, c, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)   # padding 1, grid too
    padded[:, :, 1:h + 1, 1:w + 1] = x
    d = sliding_window_view(padded, (4, 4), axis=(2, 3))[:, :, ::2, ::2]   # (N, C, th, tw, 4, 4)
    bt = BT.astype(x.dtype)
    v = bt @ d @ bt.T
    return v.transpose(4, 5, 0, 2, 3, 1).reshape(16, n * th * tw, c)


def winograd_conv_forward(x, w, bias=None, out=None):
    """3x3, stride-1, padding-1 convolution of ``x`` (N, C, H, W) with ``w`` (F, C, 3, 3).

    Returns ``(y, V)``: y (N, F, H, W) as im2col would compute it, and the transformed input
    tiles V (16, T, C) that the backward pass needs (written into ``out`` if given).
    """
    n, _, h, wd = x.shape
    f = w.shape[0]
    th, tw = tile_grid(h, wd)
    v = transform_input(x)
    if out is not None:
        out[...] = v
        v = out
    m = v @ transform_filters(w)                                   # (16, T, F)
    m = m.reshape(4, 4, n, th, tw, f).transpose(2, 3, 4, 5, 0, 1)  # (N, th, tw, F, 4, 4)
    at = AT.astype(x.dtype)
    tiles = at @ m @ at.T                                          # (N, th, tw, F, 2, 2)
    y = tiles.transpose(0, 3, 1, 4, 2, 5).reshape(n, f, 2 * th, 2 * tw)[:, :, :h, :wd]
    if bias is not None:
        y = y + bias.reshape(1, f, 1, 1)
    return y, v


def winograd_conv_backward(dout, v, w, x_shape, input_grad=True):
    """Gradients of the loss with respect to the input and the filters: ``(dx, dw)``.

    ``dout`` (N, F, H, W), ``v`` the tiles from forward (16, T, C), ``w`` (F, C, 3, 3).
    ``dx`` is None when ``input_grad`` is False. The bias gradient is dout summed; the
    layer computes it.
    """
    n, c, h, wd = x_shape
    f = w.shape[0]
    th, tw = tile_grid(h, wd)
    at, bt, g = AT.astype(v.dtype), BT.astype(v.dtype), G.astype(v.dtype)
    dy = np.zeros((n, f, 2 * th, 2 * tw), dtype=v.dtype)          # pad the tile grid
    dy[:, :, :h, :wd] = dout
    dy = dy.reshape(n, f, th, 2, tw, 2).transpose(0, 2, 4, 1, 3, 5)   # (N, th, tw, F, 2, 2)
    dm = (at.T @ dy @ at).transpose(4, 5, 0, 1, 2, 3).reshape(16, n * th * tw, f)
    du = v.transpose(0, 2, 1) @ dm                                 # (16, C, F)
    dw = g.T @ du.reshape(4, 4, c, f).transpose(3, 2, 0, 1) @ g    # (F, C, 3, 3)
    if not input_grad:
        return None, dw
    dv = dm @ transform_filters(w).transpose(0, 2, 1)              # (16, T, C)
    dv = dv.reshape(4, 4, n, th, tw, c).transpose(2, 5, 3, 4, 0, 1)   # (N, C, th, tw, 4, 4)
    dd = bt.T @ dv @ bt
    dpadded = np.zeros((n, c, 2 * th + 2, 2 * tw + 2), dtype=v.dtype)
    for i in range(4):            # the adjoint of taking tiles: overlapping tiles add up
        for j in range(4):
            dpadded[:, :, i:i + 2 * th:2, j:j + 2 * tw:2] += dd[..., i, j]
    return dpadded[:, :, 1:h + 1, 1:wd + 1], dw
