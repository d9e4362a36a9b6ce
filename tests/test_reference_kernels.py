"""The reference kernels against naive loops, and the properties their docstrings promise;
then the contract of the layers built on them (Conv2D, MaxPool2D, ReLU) on every backend:
a gradient of the wrong shape is refused by name, backward works after an evaluation-mode
forward, nothing is kept under no_grad(), and bad constructor arguments are refused."""

from __future__ import annotations

import re

import numpy as np
import pytest

import minivgg as mv
from minivgg import backend
from minivgg.kernels import reference as ref
from minivgg.layers import Conv2D, MaxPool2D, ReLU


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


# -- Conv2D, MaxPool2D and ReLU on every backend ------------------------------------------------

BACKENDS = [pytest.param("numpy", id="numpy"), pytest.param("numba", id="numba"),
            pytest.param("cupy", id="cupy", marks=pytest.mark.gpu)]
LAYERS = {                        # name: (build, input shape); 16 channels: Winograd on Numba
    "conv-im2col": (lambda r: Conv2D(3, 4, 3, padding=1, rng=r, algorithm="im2col"),
                    (4, 3, 6, 6)),
    "conv-auto": (lambda r: Conv2D(16, 8, 3, padding=1, rng=r), (4, 16, 6, 6)),
    "conv-s2": (lambda r: Conv2D(3, 4, 3, stride=2, padding=1, rng=r), (4, 3, 7, 7)),
    "maxpool": (lambda r: MaxPool2D(2, 2), (4, 3, 6, 6)),
    "relu": (lambda r: ReLU(), (4, 3, 6, 6)),
}


@pytest.fixture(params=BACKENDS)
def device(request):
    """Run under one backend; yields the device ("cpu" or "gpu") to put layer and input on."""
    saved = backend._cpu_kernels, backend._device
    if request.param == "cupy" and backend.cupy_problem() is not None:
        pytest.skip("needs CuPy and a CUDA device")
    mv.set_backend(request.param)
    yield "gpu" if request.param == "cupy" else "cpu"
    backend._cpu_kernels, backend._device = saved


def placed(name, device, seed=0):
    build, shape = LAYERS[name]
    rng = np.random.default_rng(seed)
    layer = build(rng).astype(np.float64).to(device)
    return layer, mv.to_device(rng.standard_normal(shape), device)


def wrong_shapes(shape):
    n, c, h, w = shape
    return {"fewer images": (n // 2, c, h, w), "more images": (2 * n, c, h, w),
            "height": (n, c, h + 1, w), "width": (n, c, h, w - 1), "channels": (n, c + 1, h, w)}


@pytest.mark.parametrize("name", LAYERS)
def test_a_gradient_of_another_shape_is_refused_by_name(name, device):
    layer, x = placed(name, device)
    y = layer.forward(x)
    layer_name = type(layer).__name__
    for shape in wrong_shapes(y.shape).values():
        wrong = mv.to_device(np.ones(shape), device)
        with pytest.raises(ValueError, match=rf"{layer_name}: backward: expected a gradient of "
                                             rf"shape {re.escape(str(tuple(y.shape)))}.*got "
                                             rf"{re.escape(str(shape))}"):
            layer.backward(wrong)
    assert layer.backward(mv.to_device(np.ones(y.shape), device)).shape == x.shape


@pytest.mark.parametrize("name", LAYERS)
def test_a_gradient_for_an_earlier_forward_is_refused(name, device):
    """forward(8 images), forward(2 images), backward(gradient of the first): refused."""
    layer, x = placed(name, device)
    y_big = layer.forward(mv.to_device(np.ones((2 * x.shape[0],) + x.shape[1:]), device))
    layer.forward(x)
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}: backward: expected"):
        layer.backward(mv.to_device(np.ones(y_big.shape), device))


@pytest.mark.parametrize("name", LAYERS)
def test_backward_after_an_evaluation_forward(name, device):
    """These layers compute the same in both modes, and backward works after either."""
    layer, x = placed(name, device)
    dout = None
    results = []
    for mode in ("train", "eval-call", "eval-mode"):
        layer.train()
        if mode == "eval-mode":
            layer.eval()
        y = layer.forward(x, training=False) if mode == "eval-call" else layer.forward(x)
        if dout is None:
            dout = mv.to_device(np.random.default_rng(1).standard_normal(y.shape), device)
        dx = layer.backward(dout)
        results.append([mv.asnumpy(a) for a in (y, dx, *[p.grad for p in layer.parameters()])])
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", LAYERS)
def test_no_grad_keeps_nothing_and_backward_then_raises(name, device):
    layer, x = placed(name, device)
    layer.forward(x)                                  # a cache that no_grad must drop
    with mv.no_grad():
        y = layer.forward(x, training=True)
    assert layer.cache is None
    with pytest.raises(RuntimeError, match=rf"{type(layer).__name__}: backward\(\) called "
                                           "before forward"):
        layer.backward(y)


def test_conv2d_refuses_a_gradient_of_another_dtype(rng):
    conv = Conv2D(2, 3, rng=rng)
    y = conv.forward(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
    with pytest.raises(TypeError, match="Conv2D: backward: expected a gradient of dtype float32"):
        conv.backward(np.ones(y.shape))


@pytest.mark.parametrize("make,message", [
    (lambda: Conv2D(3, 0), "Conv2D: out_channels must be a positive integer, got 0"),
    (lambda: Conv2D(0, 3), "Conv2D: in_channels must be a positive integer, got 0"),
    (lambda: Conv2D(3.0, 3), "Conv2D: in_channels must be a positive integer, got 3.0"),
    (lambda: Conv2D(3, 3, kernel_size=0), "Conv2D: kernel_size must be a positive integer"),
    (lambda: Conv2D(3, 3, kernel_size=2.5), "Conv2D: kernel_size .* got 2.5"),
    (lambda: Conv2D(3, 3, stride=0), "Conv2D: stride must be a positive integer, got 0"),
    (lambda: Conv2D(3, 3, stride=True), "Conv2D: stride must be a positive integer, got True"),
    (lambda: Conv2D(3, 3, padding=-1), "Conv2D: padding must be a non-negative int"),
    (lambda: MaxPool2D(0), "MaxPool2D: kernel_size must be a positive integer, got 0"),
    (lambda: MaxPool2D(2.0), "MaxPool2D: kernel_size must be a positive integer, got 2.0"),
    (lambda: MaxPool2D(2, 0), "MaxPool2D: stride must be a positive integer, got 0"),
])
def test_bad_constructor_arguments_are_refused_by_name(make, message):
    with pytest.raises(ValueError, match=message):
        make()
