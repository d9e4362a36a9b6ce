"""Every layer's backward pass against centred finite differences (float64, rel. error < 1e-7)."""

from __future__ import annotations

import numpy as np
import pytest

from minivgg.gradcheck import check_layer
from minivgg.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU

TOL = 1e-7


def distinct(rng, shape, spacing=0.1):
    """Values all different by at least `spacing` (>> eps): no max-pool ties, no kinks."""
    values = rng.permutation(int(np.prod(shape))) * spacing
    return (values - values.mean()).reshape(shape).astype(np.float64)


def away_from_zero(rng, shape, margin=0.05):
    """Random values with |x| > margin, so finite differences never cross ReLU's kink."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + margin, x - margin)


CONV_CASES = [
    # (N, C, H, W, F, kernel, stride, padding)
    (2, 3, 5, 5, 4, 3, 1, 1),
    (2, 3, 7, 6, 2, 3, 2, 1),        # odd sizes, stride 2, non-square
    (1, 4, 5, 5, 3, 1, 1, 0),        # 1x1 kernel: channel mixing
    (2, 2, 6, 6, 3, 3, 1, "same"),
    (1, 2, 9, 7, 2, 5, 2, "same"),   # 5x5 kernel, stride 2
    (2, 3, 4, 4, 2, 3, 1, 0),        # no padding
    (1, 1, 8, 8, 2, 2, 2, 0),        # even kernel, non-overlapping
]


@pytest.mark.parametrize("n,c,h,w,f,k,s,p", CONV_CASES)
def test_conv2d_gradients(rng, n, c, h, w, f, k, s, p):
    layer = Conv2D(c, f, kernel_size=k, stride=s, padding=p, rng=rng).astype(np.float64)
    layer.bias.data[:] = rng.standard_normal(f)
    errors = check_layer(layer, rng.standard_normal((n, c, h, w)), tol=TOL)
    assert set(errors) == {"input", "weight", "bias"}


def test_conv2d_without_bias_gradients(rng):
    layer = Conv2D(2, 3, bias=False, rng=rng).astype(np.float64)
    assert set(check_layer(layer, rng.standard_normal((2, 2, 5, 5)), tol=TOL)) == {"input",
                                                                                 "weight"}


@pytest.mark.parametrize("shape,k,s", [((2, 3, 4, 4), 2, 2), ((2, 2, 7, 7), 2, 2),
                                       ((1, 2, 7, 5), 3, 2), ((1, 1, 6, 6), 3, 1)])
def test_maxpool_gradients(rng, shape, k, s):
    # overlapping windows (stride < k) accumulate gradients on shared maxima
    check_layer(MaxPool2D(k, s), distinct(rng, shape), tol=TOL)


@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 5, 5)])
def test_relu_gradients(rng, shape):
    check_layer(ReLU(), away_from_zero(rng, shape), tol=TOL)


@pytest.mark.parametrize("n,d,m", [(4, 5, 3), (1, 7, 1), (6, 16, 10)])
def test_dense_gradients(rng, n, d, m):
    layer = Dense(d, m, rng=rng, std=1.0).astype(np.float64)
    layer.bias.data[:] = rng.standard_normal(m)
    check_layer(layer, rng.standard_normal((n, d)), tol=TOL)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_gradients_with_fixed_mask(rng, p):
    layer = Dropout(p, rng=np.random.default_rng(0))
    check_layer(layer, rng.standard_normal((6, 20)), tol=TOL)


def test_flatten_gradients(rng):
    check_layer(Flatten(), rng.standard_normal((3, 2, 3, 4)), tol=TOL)


def test_large_tensors_are_sampled_and_still_checked(rng):
    layer = Conv2D(8, 16, rng=rng).astype(np.float64)   # 1152 weights > max_entries
    errors = check_layer(layer, rng.standard_normal((2, 8, 6, 6)), max_entries=50, tol=TOL)
    assert errors["weight"] < TOL


def test_the_sample_takes_the_largest_gradients_and_random_others():
    """A gradient that is zero but for a few entries is checked at those entries, so a
    tensor is reported as vanishing only when its whole gradient is."""
    from minivgg.gradcheck import _sample
    grad = np.zeros(1000)
    grad[[7, 500, 993]] = [1e-3, -2.0, 0.5]
    idx = _sample(grad.size, 8, np.random.default_rng(0), grad)
    assert {7, 500, 993} <= set(idx.tolist()) and len(set(idx.tolist())) == 8
    assert len(set(_sample(grad.size, 8, np.random.default_rng(1), grad)) - {7, 500, 993}) >= 4
    assert _sample(5, 8, np.random.default_rng(0), grad[:5]).tolist() == [0, 1, 2, 3, 4]
