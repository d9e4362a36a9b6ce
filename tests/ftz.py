"""What the float32 CUDA kernels compute, given that CuPy compiles them with ``-ftz=true``.

Under flush-to-zero, every float32 arithmetic instruction and comparison reads a subnormal
(0 < |x| < 2**-126 ~ 1.18e-38) as a zero of its sign and writes a subnormal result as zero;
loads, stores, moves and selections keep the bits. So each kernel's float32 result is the
reference's, computed in that arithmetic (``ftz`` below flushes an array):

    im2col          moves only                 the reference, bits kept (subnormals too)
    col2im          sums from zero, in order   every partial sum flushed
    max-pool fwd    compares, then moves       argmax of the flushed input; out = x there
    max-pool bwd    sums, in order             every partial sum flushed
    ReLU fwd        compares, then moves       mask = ftz(x) > 0; y = x where kept, else 0
    ReLU bwd        selects                    the reference

float64 is not flushed: its expected values are the reference's. These functions are the
comparison the GPU tests use; tests/test_kernels_cuda.py checks them, and checks that they
differ from the plain reference, by running the CUDA source on the CPU in the x86 FTZ/DAZ
modes (the same rules in hardware).
"""

from __future__ import annotations

import numpy as np

from minivgg.kernels import reference
from minivgg.kernels.reference import conv_output_size

TINY = np.finfo(np.float32).tiny            # the smallest normal float32
# float32 values that meet flush-to-zero: subnormals of both signs, and normals just above
# TINY whose sums and differences fall below it (1.5e-38 - 1.4e-38 = 1e-39)
EDGE = np.array([1e-40, -1e-40, 3e-39, -3e-39, 1.5e-38, -1.4e-38, 1.2e-38, 1.0, -1.0, 0.0],
                dtype=np.float32)


def ftz(a):
    """``a`` with float32 subnormals replaced by zeros of their sign (other dtypes as they are)."""
    a = np.asarray(a)
    if a.dtype != np.float32:
        return a
    return np.where(np.abs(a) < TINY, np.copysign(np.float32(0), a), a).astype(np.float32)


def edge_values(rng, shape, dtype):
    """An array of ``shape`` drawn from EDGE (as ``dtype``: in float64 none is subnormal)."""
    return rng.choice(EDGE, size=shape).astype(dtype)


def col2im(cols, x_shape, kh, kw, stride, pad):
    """reference.col2im, each partial sum flushed (float32)."""
    n, c, h, w = x_shape
    oh, ow = conv_output_size(h, kh, stride, pad), conv_output_size(w, kw, stride, pad)
    cols = cols.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    padded = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            region = (slice(None), slice(None), slice(i, i + stride * oh, stride),
                      slice(j, j + stride * ow, stride))
            padded[region] = ftz(padded[region] + ftz(cols[:, :, i, j]))
    return padded[:, :, pad:pad + h, pad:pad + w]


def maxpool_forward(x, k, stride):
    """``(out, argmax)``: the argmax of the flushed input, the unflushed value there."""
    _, argmax = reference.maxpool_forward(ftz(x), k, stride)
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, k, stride, 0), conv_output_size(w, k, stride, 0)
    windows = np.stack([x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
                        for i in range(k) for j in range(k)])
    return np.take_along_axis(windows, argmax[None], axis=0)[0], argmax


def maxpool_backward(dout, argmax, x_shape, k, stride):
    """reference.maxpool_backward, each partial sum flushed (float32); like the kernel, it
    adds only the gradients routed to a pixel (a flushed -0 plus 0 would be +0)."""
    n, c, oh, ow = dout.shape
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for i in range(k):
        for j in range(k):
            region = (slice(None), slice(None), slice(i, i + stride * oh, stride),
                      slice(j, j + stride * ow, stride))
            routed = argmax == i * k + j          # only these are added (a -0 stays -0)
            dx[region] = np.where(routed, ftz(dx[region] + ftz(dout)), dx[region])
    return dx


def relu_forward(x):
    """``(y, mask)``: compared flushed, kept values moved with their bits."""
    y, mask = reference.relu_forward(ftz(x))
    return np.where(mask, x, y).astype(x.dtype), mask


def expected(kernel, *args):
    """The float32 result of ``kernel`` under flush-to-zero; float64 is the reference's."""
    dtype = np.asarray(args[0]).dtype
    if dtype != np.float32:
        return getattr(reference, kernel)(*args)
    return {"im2col": reference.im2col, "col2im": col2im, "maxpool_forward": maxpool_forward,
            "maxpool_backward": maxpool_backward, "relu_forward": relu_forward,
            "relu_backward": reference.relu_backward}[kernel](*args)


def same_bits(actual, expected_value):
    """Equal as bit patterns (NaN payloads aside), which tells +0 from -0 and 1e-40 from 0."""
    a, e = np.asarray(actual), np.asarray(expected_value)
    if a.dtype.kind in "iu" and e.dtype.kind in "iu":      # an argmax: compact on the GPU
        np.testing.assert_array_equal(a, e)
        return
    assert a.shape == e.shape and a.dtype == e.dtype
    a, e = np.ascontiguousarray(a), np.ascontiguousarray(e)
    both_nan = np.isnan(a) & np.isnan(e) if a.dtype.kind == "f" else np.zeros(a.shape, bool)
    if a.dtype.kind == "f":
        view = {4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
        differ = (a.view(view) != e.view(view)) & ~both_nan
    else:
        differ = a != e
    assert not differ.any(), (f"{int(differ.sum())} of {a.size} entries differ, first at "
                              f"{np.argwhere(differ)[0].tolist()}: {a[differ][0]!r} vs "
                              f"{e[differ][0]!r}")
