"""The reference kernels against naive loops, and the properties their docstrings promise."""

from __future__ import annotations

import numpy as np
import pytest

from minivgg.kernels import reference as ref
from minivgg.layers import Conv2D, MaxPool2D


@pytest.mark.parametrize("n,c,h,w,f,k,s,p", [
    (2, 3, 5, 5, 4, 3, 1, 1), (1, 2, 7, 6, 3, 3, 2, 1), (2, 4, 5, 5, 3, 1, 1, 0),
    (1, 3, 8, 8, 2, 5, 2, 2), (2, 1, 6, 5, 2, 2, 2, 0), (1, 2, 4, 4, 2, 3, 3, 1),
])
def test_im2col_convolution_equals_naive_loops(rng, n, c, h, w, f, k, s, p):
    x = rng.standard_normal((n, c, h, w))
    layer = Conv2D(c, f, kernel_size=k, stride=s, padding=p, rng=rng).astype(np.float64)
    layer.bias.data[:] = rng.standard_normal(f)
    expected = ref.conv2d_naive(x, layer.weight.data, layer.bias.data, s, p)
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-12)


def test_im2col_layout_on_a_tiny_image():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    cols = ref.im2col(x, 3, 3, stride=1, pad=0)
    assert cols.shape == (4, 9) and cols.dtype == np.float32
    np.testing.assert_array_equal(cols[0], [0, 1, 2, 4, 5, 6, 8, 9, 10])
    np.testing.assert_array_equal(cols[3], [5, 6, 7, 9, 10, 11, 13, 14, 15])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_preserve_dtype(rng, dtype):
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    cols = ref.im2col(x, 3, 3, 1, 1)
    assert cols.dtype == dtype
    assert ref.col2im(cols, x.shape, 3, 3, 1, 1).dtype == dtype
    out, argmax = ref.maxpool_forward(x, 2, 2)
    assert out.dtype == dtype
    assert ref.maxpool_backward(out, argmax, x.shape, 2, 2).dtype == dtype


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 1), (2, 1, 0), (5, 2, 2)])
def test_col2im_is_the_adjoint_of_im2col(rng, k, s, p):
    """<im2col(x), c> == <x, col2im(c)>: col2im accumulates exactly what im2col copied."""
    x = rng.standard_normal((2, 3, 7, 6))
    c = rng.standard_normal(ref.im2col(x, k, k, s, p).shape)
    lhs = np.sum(ref.im2col(x, k, k, s, p) * c)
    rhs = np.sum(x * ref.col2im(c, x.shape, k, k, s, p))
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_col2im_counts_overlaps():
    """With a 3x3 kernel, stride 1, the centre pixel of a 3x3 image is in all 9 fields."""
    x_shape = (1, 1, 3, 3)
    ones = np.ones_like(ref.im2col(np.zeros(x_shape), 3, 3, 1, 1))
    counts = ref.col2im(ones, x_shape, 3, 3, 1, 1)[0, 0]
    np.testing.assert_array_equal(counts, [[4, 6, 4], [6, 9, 6], [4, 6, 4]])


@pytest.mark.parametrize("shape,k,s", [((2, 3, 4, 4), 2, 2), ((1, 2, 7, 7), 2, 2),
                                       ((1, 2, 7, 5), 3, 2), ((2, 1, 6, 6), 3, 1)])
def test_maxpool_equals_naive_loops(rng, shape, k, s):
    x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float64)
    out, _ = ref.maxpool_forward(x, k, s)
    np.testing.assert_array_equal(out, ref.maxpool_naive(x, k, s))


def test_maxpool_tie_goes_to_the_first_maximum():
    x = np.array([[[[1.0, 5.0], [5.0, 5.0]]]])
    out, argmax = ref.maxpool_forward(x, 2, 2)
    assert out[0, 0, 0, 0] == 5.0 and argmax[0, 0, 0, 0] == 1
    dx = ref.maxpool_backward(np.ones((1, 1, 1, 1)), argmax, x.shape, 2, 2)
    np.testing.assert_array_equal(dx[0, 0], [[0, 1], [0, 0]])


@pytest.mark.parametrize("size,k,s,p,expected", [
    (7, 2, 2, 0, 3), (32, 2, 2, 0, 16), (5, 3, 2, 1, 3), (224, 3, 1, 1, 224), (6, 3, 2, 0, 2),
])
def test_output_size_floor_rule(size, k, s, p, expected):
    assert ref.conv_output_size(size, k, s, p) == expected


def test_layers_follow_the_floor_rule(rng):
    x = rng.standard_normal((1, 2, 7, 7))
    assert MaxPool2D(2, 2).forward(x).shape == (1, 2, 3, 3)
    assert MaxPool2D(2, 2).output_shape((2, 7, 7)) == (2, 3, 3)
    conv = Conv2D(2, 4, kernel_size=3, stride=2, padding=1).astype(np.float64)
    assert conv.forward(x).shape == (1, 4, 4, 4) == (1, *conv.output_shape((2, 7, 7)))
