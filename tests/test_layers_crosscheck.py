"""Every layer against PyTorch, float64, forward and backward, to 1e-10."""

from __future__ import annotations

import numpy as np
import pytest

from minivgg.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from minivgg.losses import SoftmaxCrossEntropy

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark = pytest.mark.crosscheck
TOL = dict(rtol=1e-10, atol=1e-10)


def _run_torch(fn, x, dout, *params):
    tx = torch.tensor(x, requires_grad=True)
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    y = fn(tx, *tparams)
    y.backward(torch.tensor(dout))
    return y.detach().numpy(), tx.grad.numpy(), [p.grad.numpy() for p in tparams]


@pytest.mark.parametrize("n,c,h,w,f,k,s,p", [
    (2, 3, 8, 8, 4, 3, 1, 1), (2, 3, 7, 9, 5, 3, 2, 1), (1, 4, 5, 5, 3, 1, 1, 0),
    (2, 2, 9, 9, 3, 5, 2, 2), (1, 3, 6, 6, 2, 3, 1, 0),
])
def test_conv2d_matches_torch(rng, n, c, h, w, f, k, s, p):
    layer = Conv2D(c, f, kernel_size=k, stride=s, padding=p, rng=rng).astype(np.float64)
    layer.bias.data[:] = rng.standard_normal(f)
    x = rng.standard_normal((n, c, h, w))
    y = layer.forward(x)
    dout = rng.standard_normal(y.shape)
    dx = layer.backward(dout)
    ty, tdx, (tdw, tdb) = _run_torch(lambda a, wt, b: F.conv2d(a, wt, b, stride=s, padding=p),
                                     x, dout, layer.weight.data, layer.bias.data)
    np.testing.assert_allclose(y, ty, **TOL)
    np.testing.assert_allclose(dx, tdx, **TOL)
    np.testing.assert_allclose(layer.weight.grad, tdw, **TOL)
    np.testing.assert_allclose(layer.bias.grad, tdb, **TOL)


@pytest.mark.parametrize("shape,k,s", [((2, 3, 8, 8), 2, 2), ((2, 2, 7, 7), 2, 2),
                                       ((1, 2, 7, 6), 3, 2), ((1, 1, 6, 6), 3, 1)])
def test_maxpool_matches_torch(rng, shape, k, s):
    x = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1
    layer = MaxPool2D(k, s)
    y = layer.forward(x)
    dout = rng.standard_normal(y.shape)
    ty, tdx, _ = _run_torch(lambda a: F.max_pool2d(a, k, s), x, dout)
    np.testing.assert_allclose(y, ty, **TOL)
    np.testing.assert_allclose(layer.backward(dout), tdx, **TOL)


def test_maxpool_ties_route_like_torch():
    x = np.zeros((1, 1, 4, 4))            # all tied: both pick the first of each window
    layer = MaxPool2D()
    layer.forward(x)
    dout = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    _, tdx, _ = _run_torch(lambda a: F.max_pool2d(a, 2, 2), x, dout)
    np.testing.assert_array_equal(layer.backward(dout), tdx)


def test_dense_matches_torch(rng):
    layer = Dense(7, 5, rng=rng, std=1.0).astype(np.float64)
    layer.bias.data[:] = rng.standard_normal(5)
    x = rng.standard_normal((4, 7))
    y = layer.forward(x)
    dout = rng.standard_normal(y.shape)
    dx = layer.backward(dout)
    # torch's linear stores the weight as (out, in): ours is its transpose
    ty, tdx, (tdw, tdb) = _run_torch(lambda a, wt, b: F.linear(a, wt, b), x, dout,
                                     layer.weight.data.T.copy(), layer.bias.data)
    np.testing.assert_allclose(y, ty, **TOL)
    np.testing.assert_allclose(dx, tdx, **TOL)
    np.testing.assert_allclose(layer.weight.grad, tdw.T, **TOL)
    np.testing.assert_allclose(layer.bias.grad, tdb, **TOL)


def test_relu_and_flatten_match_torch(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    x = np.where(x >= 0, x + 0.01, x - 0.01)
    dout = rng.standard_normal(x.shape)
    layer = ReLU()
    ty, tdx, _ = _run_torch(F.relu, x, dout)
    np.testing.assert_allclose(layer.forward(x), ty, **TOL)
    np.testing.assert_allclose(layer.backward(dout), tdx, **TOL)
    flat = Flatten()
    ty, tdx, _ = _run_torch(lambda a: a.flatten(1), x, dout.reshape(2, -1))
    np.testing.assert_array_equal(flat.forward(x), ty)
    np.testing.assert_array_equal(flat.backward(dout.reshape(2, -1)), tdx)


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_cross_entropy_matches_torch(rng, scale):
    logits = rng.standard_normal((6, 10)) * scale
    labels = rng.integers(0, 10, 6)
    loss = SoftmaxCrossEntropy()
    value = loss.forward(logits, labels)
    tl = torch.tensor(logits, requires_grad=True)
    tvalue = F.cross_entropy(tl, torch.tensor(labels))
    tvalue.backward()
    assert value == pytest.approx(tvalue.item(), rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(loss.backward(), tl.grad.numpy(), **TOL)
