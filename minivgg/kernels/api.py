"""The public kernels: one wrapper per kernel, shared by every implementation.

Layers call these and never ask which implementation runs (dispatch.py picks it from the
array). Each wrapper does, once for all of them:

1. check the arguments (checks.py): float32 or float64, ranks, shapes against what the
   forward pass produced, one device, ``out=`` buffers. No compiled loop ever runs on
   arguments that would take it outside its arrays; the error names the kernel instead.
2. compute the output size (the floor rule, ``reference.conv_output_size``) and allocate
   the outputs;
3. hand C-contiguous NHWC memory to the loops of cpu.py or gpu.py, and return NCHW views of
   what they wrote (layout.py). The reference kernels get the checked arguments as they
   are: they are the specification, with their own plain shape logic, that lessons read.

Every function returns logically NCHW arrays with the reference's shapes, dtypes and values.
"""

from __future__ import annotations

import numpy as np

from minivgg.backend import get_array_module
from minivgg.kernels import checks, gpu, reference, winograd
from minivgg.kernels.dispatch import implementation, winograd_implementation
from minivgg.kernels.layout import as_nhwc, in_order, memory_order, nchw
from minivgg.kernels.winograd import tile_grid, tile_side, tile_size


def _empty(like, shape, dtype):
    """An uninitialised array on the device of ``like`` (the loops write every entry)."""
    return get_array_module(like).empty(shape, dtype=dtype)


# -- convolution by im2col ------------------------------------------------------------------

def _column_shape(who, x, kh, kw, stride, pad, out, transposed=False):
    """Check x (N, C, H, W) and ``out``; (OH, OW, the column matrix's shape): im2col's rows
    (N*OH*OW, C*kh*kw), or their transpose."""
    checks.floats(who, "x", x, ndim=4)
    n, c, h, w = x.shape
    oh, ow = checks.output_size(who, (h, w), kh, kw, stride, pad)
    shape = (c * kh * kw, n * oh * ow) if transposed else (n * oh * ow, c * kh * kw)
    if out is not None:
        checks.out_buffer(who, out, shape, x.dtype, x)
    return oh, ow, shape

def im2col(x, kh, kw, stride=1, pad=0, out=None):
    """Receptive fields of ``x`` (N, C, H, W) as rows (N*OH*OW, C*kh*kw): reference.im2col.

    ``out``, if given, is the C-contiguous buffer the rows are written into (and returned).
    """
    oh, ow, shape = _column_shape("im2col", x, kh, kw, stride, pad, out)
    impl = implementation(x)
    if impl is reference:
        return reference.im2col(x, kh, kw, stride, pad, out=out)
    cols = _empty(x, shape, x.dtype) if out is None else out
    impl.im2col_nhwc(as_nhwc(x), kh, kw, stride, pad, oh, ow, cols)
    return cols


def im2col_planes(x, kh, kw, stride=1, pad=0, out=None):
    """im2col's matrix transposed, (C*kh*kw, N*OH*OW): reference.im2col_planes.

    Each row is one input plane shifted by a kernel offset; Conv2D builds its columns this
    way where ``im2col_by_planes`` says so (few input channels on the Numba kernels), and
    multiplies its transpose. ``out``, if given, is the C-contiguous buffer written into.
    """
    oh, ow, shape = _column_shape("im2col_planes", x, kh, kw, stride, pad, out,
                                  transposed=True)
    impl = implementation(x)
    if impl is reference:
        return reference.im2col_planes(x, kh, kw, stride, pad, out=out)
    planes = _empty(x, shape, x.dtype) if out is None else out
    impl.im2col_planes(get_array_module(x).ascontiguousarray(x), kh, kw, stride, pad, oh, ow,
                       planes)
    return planes


def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
    """Fold rows (N*OH*OW, C*kh*kw) into an image of ``x_shape``, summing overlaps.

    The adjoint of im2col (reference.col2im); ``cols`` must have exactly the shape im2col
    gives for ``x_shape`` and this window.
    """
    checks.floats("col2im", "cols", cols, ndim=2)
    n, c, h, w = checks.image_shape("col2im", x_shape)
    oh, ow = checks.output_size("col2im", (h, w), kh, kw, stride, pad)
    checks.shape("col2im", "cols", cols, (n * oh * ow, c * kh * kw),
                 f"im2col's rows for x_shape {(n, c, h, w)}, a {kh}x{kw} window, "
                 f"stride {stride}, padding {pad}")
    impl = implementation(cols)
    if impl is reference:
        return reference.col2im(cols, (n, c, h, w), kh, kw, stride, pad)
    dx = _empty(cols, (n, h, w, c), cols.dtype)
    contiguous = get_array_module(cols).ascontiguousarray(cols)    # free when already so
    impl.col2im_nhwc(contiguous, kh, kw, stride, pad, oh, ow, dx)
    return nchw(dx)


def matmul(a, b, out=None, bias=None):
    """``a @ b`` of 2-D arrays (M, K) and (K, N), into ``out`` (M, N) if given; ``bias``
    (N,), if given, is added to every row (a layer's ``x @ W + b`` in one call).

    BLAS on the CPU (blas.py shares it out among threads with the Numba kernels, and each
    thread adds the bias to the rows it has just computed), cuBLAS on the GPU (float32 in
    TF32 only where ``set_tf32(True)`` allows it).
    """
    checks.floats("matmul", "a", a, ndim=2)
    checks.floats("matmul", "b", b, ndim=2)
    checks.same_dtype("matmul", a=a, b=b)
    checks.same_device("matmul", a=a, b=b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: a {tuple(a.shape)} has {a.shape[1]} columns but b "
                         f"{tuple(b.shape)} has {b.shape[0]} rows")
    shape = (a.shape[0], b.shape[1])
    if out is not None:
        checks.out_buffer("matmul", out, shape, a.dtype, a)
    if bias is not None:
        checks.floats("matmul", "bias", bias, ndim=1)
        checks.shape("matmul", "bias", bias, (shape[1],), "one value per column of a @ b")
        checks.same_dtype("matmul", a=a, bias=bias)
        checks.same_device("matmul", a=a, bias=bias)
    impl = implementation(a)
    if impl is reference:
        out = reference.matmul(a, b, out=out)
    else:
        out = _empty(a, shape, a.dtype) if out is None else out
        if impl is not gpu:
            return impl.matmul(a, b, out, bias)
        impl.matmul(a, b, out)
    if bias is not None:
        out += bias
    return out


def channel_sums(a, out=None):
    """The column sums of a 2-D array ``a`` (M, C), shape (C,): reference.channel_sums.

    Used for bias gradients and batch norm's statistics. On the GPU a two-stage product with
    a vector of ones on cuBLAS (gpu_channels.py: the whole device busy, never TF32); with
    the Numba kernels, blocks of rows summed in parallel in float64 (cpu.py); else NumPy's
    sum over rows. ``out``, if given, is the C-contiguous (C,) result buffer.
    """
    checks.floats("channel_sums", "a", a, ndim=2)
    shape = (a.shape[1],)
    if out is not None:
        checks.out_buffer("channel_sums", out, shape, a.dtype, a)
    impl = implementation(a)
    if impl is reference:
        return reference.channel_sums(a, out=out)
    if impl is not gpu:
        return impl.channel_sums(a, out=out)
    out = _empty(a, shape, a.dtype) if out is None else out
    return gpu.channel_sums(a, out)


# -- max-pooling ------------------------------------------------------------------------------

def _argmax_dtype(who, impl, k):
    """uint8 holds i * k + j for windows up to 16 x 16; larger ones need int32 (CPU only)."""
    if k > impl.MAX_POOL_WINDOW:
        m, where = impl.MAX_POOL_WINDOW, "GPU" if impl is gpu else "CPU"
        raise ValueError(f"{who}: the {where} kernels support windows up to {m}x{m}, "
                         f"got {k}x{k}")
    return np.uint8 if k * k <= 256 else np.int32


def maxpool_forward(x, k=2, stride=2):
    """Max-pooling of ``x`` (N, C, H, W): ``(out, argmax)``, both (N, C, OH, OW).

    ``argmax`` is the position i * k + j of each window's first maximum (reference.py);
    the fast kernels store it compactly (uint8 for windows up to 16 x 16).
    """
    checks.floats("maxpool_forward", "x", x, ndim=4)
    checks.sizes("maxpool_forward", k=k, stride=stride)
    n, c, h, w = x.shape
    oh, ow = checks.output_size("maxpool_forward", (h, w), k, k, stride, 0)
    impl = implementation(x)
    if impl is reference:
        return reference.maxpool_forward(x, k, stride)
    out = _empty(x, (n, oh, ow, c), x.dtype)
    argmax = _empty(x, (n, oh, ow, c), _argmax_dtype("maxpool_forward", impl, k))
    impl.maxpool_forward_nhwc(as_nhwc(x), k, stride, out, argmax)
    return nchw(out), nchw(argmax)


def maxpool_backward(dout, argmax, x_shape, k=2, stride=2):
    """Route each output gradient to its window's maximum: dx of shape ``x_shape``.

    ``dout`` and ``argmax`` must have the shape maxpool_forward gave for ``x_shape``.
    """
    who = "maxpool_backward"
    checks.floats(who, "dout", dout, ndim=4)
    checks.sizes(who, k=k, stride=stride)
    n, c, h, w = checks.image_shape(who, x_shape)
    oh, ow = checks.output_size(who, (h, w), k, k, stride, 0)
    why = f"the pooled output for x_shape {(n, c, h, w)}, window {k}, stride {stride}"
    checks.shape(who, "dout", dout, (n, c, oh, ow), why)
    checks.integers(who, "argmax", argmax)
    checks.shape(who, "argmax", argmax, (n, c, oh, ow), why)
    checks.same_device(who, dout=dout, argmax=argmax)
    impl = implementation(dout)
    if impl is reference:
        return reference.maxpool_backward(dout, argmax, (n, c, h, w), k, stride)
    argmax = argmax.astype(_argmax_dtype(who, impl, k), copy=False)   # free if it came
    dx = _empty(dout, (n, h, w, c), dout.dtype)                        # from these kernels
    impl.maxpool_backward_nhwc(as_nhwc(dout), as_nhwc(argmax), k, stride, dx)
    return nchw(dx)


# -- ReLU: elementwise, in memory order (an NCHW view of NHWC data stays one) ---------------

def relu_forward(x, inplace: bool = False):
    """``(max(x, 0), x > 0)``: the output and the boolean mask backward needs.

    ``inplace``: the output may take x's memory (it does wherever x's entries can be run
    over in memory order: contiguous arrays and their transposes, such as NCHW views of
    NHWC memory), so x must not be read afterwards. Elementwise, each entry is read before
    it is written, so the kernels need no second buffer.
    """
    checks.floats("relu_forward", "x", x)
    impl = implementation(x)
    if impl is reference:
        return reference.relu_forward(x, inplace)
    flat, restore, _ = memory_order(x)
    y = flat if inplace else _empty(x, flat.shape, x.dtype)
    mask = _empty(x, flat.shape, np.bool_)
    impl.relu_forward_flat(flat, y, mask)
    return restore(y), restore(mask)


def relu_backward(dout, mask):
    """``dout * [x > 0]``, with ``mask`` the boolean array relu_forward returned."""
    checks.floats("relu_backward", "dout", dout)
    checks.booleans("relu_backward", "mask", mask)
    checks.shape("relu_backward", "dout", dout, mask.shape, "the shape of relu_forward's mask")
    checks.same_device("relu_backward", dout=dout, mask=mask)
    impl = implementation(dout)
    if impl is reference:
        return reference.relu_backward(dout, mask)
    flat, restore, perm = memory_order(dout)
    dx = _empty(dout, flat.shape, dout.dtype)
    impl.relu_backward_flat(flat, in_order(mask, perm), dx)
    return restore(dx)


# -- Winograd F(2x2, 3x3) and F(4x4, 3x3): NumPy arrays only (winograd.py has the math) -------

def _winograd_filters(who, w, c):
    checks.floats(who, "w", w, ndim=4)
    checks.shape(who, "w", w, (w.shape[0], c, 3, 3), f"3x3 filters over {c} channels")
    return w.shape[0]


def winograd_conv_forward(x, w, bias=None, out=None, tile=None):
    """3x3, stride-1, padding-1 convolution of ``x`` (N, C, H, W) with ``w`` (F, C, 3, 3).

    Returns ``(y, V)``: y (N, F, H, W), and the transformed input tiles V ((m+2)², T, C),
    T = N * ceil(H/m) * ceil(W/m), that backward needs (written into ``out`` if given).
    ``tile``: the output tile side m: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3); by default
    ``winograd.tile_size(H, W)`` (4 for maps of 3x3 and larger).
    """
    who = "winograd_conv_forward"
    impl = winograd_implementation(x)
    checks.floats(who, "x", x, ndim=4)
    n, c, h, wd = x.shape
    f = _winograd_filters(who, w, c)
    arrays = {"x": x, "w": w}
    if bias is not None:
        checks.floats(who, "bias", bias, ndim=1)
        checks.shape(who, "bias", bias, (f,), "one per filter")
        arrays["bias"] = bias
    checks.same_dtype(who, **arrays)
    checks.same_device(who, **arrays)
    if tile is None:
        tile = tile_size(h, wd)
    elif tile not in (2, 4):
        raise ValueError(f"{who}: tile must be 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3)), got "
                         f"{tile!r}")
    th, tw = tile_grid(h, wd, tile)
    tiles = ((tile + 2) ** 2, n * th * tw, c)
    if out is not None:
        checks.out_buffer(who, out, tiles, x.dtype, x)
    if impl is winograd:
        return winograd.winograd_conv_forward(x, w, bias, out=out, tile=tile)
    v = np.empty(tiles, dtype=x.dtype) if out is None else out
    y = np.empty((n, h, wd, f), dtype=x.dtype)
    b = np.zeros(f, dtype=x.dtype) if bias is None else np.ascontiguousarray(bias)
    impl.winograd_forward(as_nhwc(x), np.ascontiguousarray(w), b, v, y)
    return nchw(y), v


def winograd_conv_backward(dout, v, w, x_shape, input_grad=True):
    """``(dx, dw)`` from ``dout`` (N, F, H, W) and the tiles ``v`` forward returned.

    ``dx`` (N, C, H, W) is None when ``input_grad`` is False; the bias gradient (dout
    summed) is the layer's to compute.
    """
    who = "winograd_conv_backward"
    impl = winograd_implementation(dout)
    checks.floats(who, "dout", dout, ndim=4)
    checks.floats(who, "v", v, ndim=3)
    n, c, h, wd = checks.image_shape(who, x_shape)
    f = _winograd_filters(who, w, c)
    checks.shape(who, "dout", dout, (n, f, h, wd),
                 f"the output for x_shape {(n, c, h, wd)} and {f} filters")
    m = tile_side(v) if v.shape[0] in (16, 36) else tile_size(h, wd)
    th, tw = tile_grid(h, wd, m)
    checks.shape(who, "v", v, ((m + 2) ** 2, n * th * tw, c),
                 f"the tiles winograd_conv_forward gives for x_shape {(n, c, h, wd)}")
    checks.same_dtype(who, dout=dout, v=v, w=w)
    checks.same_device(who, dout=dout, v=v, w=w)
    if impl is winograd:
        return winograd.winograd_conv_backward(dout, v, w, (n, c, h, wd), input_grad)
    dw = np.empty((f, c, 3, 3), dtype=v.dtype)
    dx = np.empty((n, h, wd, c), dtype=v.dtype) if input_grad else None
    impl.winograd_backward(as_nhwc(dout), v, np.ascontiguousarray(w), dw, dx)
    return (None if dx is None else nchw(dx)), dw
