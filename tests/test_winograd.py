"""Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution against im2col, finite differences
and itself.

Float32 tolerance: every F(2x2) transform is a short sum with coefficients 0, +-1/2, +-1
(exact in binary), so beyond im2col's own rounding it adds a few roundings of partial sums
of magnitude up to ~4x the inputs (input transform) and ~9x (output transform). Relative
to the largest output that is a few ulps (eps32 = 1.2e-7): we allow 2e-6 = ~17 ulps, and
measure ~1e-7 - 3e-7 in practice. F(4x4)'s coefficients reach 5 and 8 in Bᵀ and Aᵀ, so
its partial sums grow to ~100x the inputs before they cancel: we allow 2e-5 (~170 ulps)
and measure ~4e-7 - 3e-6.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import minivgg as mv
from minivgg import backend, kernels
from minivgg.gradcheck import check_layer
from minivgg.kernels import blas, winograd
from minivgg.kernels.reference import conv2d_naive
from minivgg.layers import Conv2D

F32_TOL = 2e-6
F32_TOL_F4 = 2e-5
SHAPES = [(2, 3, 5, 5, 4), (1, 2, 7, 6, 3), (2, 4, 1, 1, 2), (1, 3, 2, 2, 5), (2, 5, 8, 8, 6),
          (1, 16, 4, 3, 8), (2, 3, 9, 13, 4)]


@pytest.fixture(autouse=True)
def _restore_backend():
    saved = backend._cpu_kernels, backend._device
    yield
    backend._cpu_kernels, backend._device = saved


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def conv_grads_reference(x, w, dout):
    """dx and dw of a 3x3 stride-1 pad-1 convolution by the im2col reference kernels."""
    n, c, h, wd = x.shape
    f = w.shape[0]
    cols = kernels.reference.im2col(x, 3, 3, 1, 1)
    dy = dout.transpose(0, 2, 3, 1).reshape(-1, f)
    dw = (dy.T @ cols).reshape(w.shape)
    dx = kernels.reference.col2im(dy @ w.reshape(f, -1), x.shape, 3, 3, 1, 1)
    return dx, dw


@pytest.mark.parametrize("cpu_kernels", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_im2col(rng, cpu_kernels, dtype, tile, shape):
    mv.set_cpu_kernels(cpu_kernels)               # winograd.py or winograd_cpu.py computes
    tol = 1e-12 if dtype == np.float64 else F32_TOL if tile == 2 else F32_TOL_F4
    n, c, h, w, f = shape
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    y, v = kernels.winograd_conv_forward(x, wt, b, tile=tile)
    assert v.shape[0] == (tile + 2) ** 2
    x64, w64 = x.astype(np.float64), wt.astype(np.float64)
    assert y.dtype == dtype and v.dtype == dtype
    assert rel(y, conv2d_naive(x64, w64, b.astype(np.float64), 1, 1)) < tol
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx, dw = kernels.winograd_conv_backward(dout, v, wt, x.shape)
    dx_ref, dw_ref = conv_grads_reference(x64, w64, dout.astype(np.float64))
    assert dx.dtype == dtype and dw.dtype == dtype
    assert rel(dx, dx_ref) < tol
    assert rel(dw, dw_ref) < tol
    none, dw2 = kernels.winograd_conv_backward(dout, v, wt, x.shape, input_grad=False)
    assert none is None and np.array_equal(dw, dw2)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_input_gradient_is_a_convolution_with_rotated_filters(rng, tile, shape):
    """dx = conv(dout, w rotated 180 degrees, in/out channels swapped), by the same routine."""
    n, c, h, w, f = shape
    x, wt = rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c, 3, 3))
    y, v = winograd.winograd_conv_forward(x, wt, tile=tile)
    dout = rng.standard_normal(y.shape)
    dx, _ = winograd.winograd_conv_backward(dout, v, wt, x.shape)
    rotated = np.ascontiguousarray(wt[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    assert rel(dx, winograd.winograd_conv_forward(dout, rotated, tile=tile)[0]) < 1e-12


def test_the_tile_size_follows_the_transformed_values():
    """F(4x4) where its 6x6 tiles hold fewer values than F(2x2)'s 4x4 tiles, else F(2x2)."""
    assert [winograd.tile_size(s, s) for s in range(1, 10)] == [2, 2, 4, 4, 2, 2, 4, 4, 4]
    assert winograd.tile_size(32, 32) == 4 and winograd.tile_size(2, 32) == 2
    assert winograd.tile_values(8, 8, 4) == 4 * 36 and winograd.tile_values(8, 8, 2) == 16 * 16
    for m in (2, 4):                  # the matrices make a correlation, in one dimension
        bt, g, at = winograd.TRANSFORMS[m]
        d, taps = rng_values(m + 2), rng_values(3)
        np.testing.assert_allclose(at @ ((g @ taps) * (bt @ d)),
                                   [d[i:i + 3] @ taps for i in range(m)], rtol=1e-13)


def rng_values(n):
    return np.random.default_rng(n).standard_normal(n)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numba_agrees_with_numpy(rng, dtype, tile):
    mv.set_cpu_kernels("numba")
    x = rng.standard_normal((3, 8, 9, 10)).astype(dtype)
    wt = rng.standard_normal((6, 8, 3, 3)).astype(dtype)
    y, v = winograd.winograd_conv_forward(x, wt, tile=tile)
    y2, v2 = kernels.winograd_conv_forward(x, wt, out=np.empty_like(v), tile=tile)
    if tile == 2:
        np.testing.assert_array_equal(v, v2)    # the input transform: same sums, same order
    tol = 1e-13 if dtype == np.float64 else 1e-6 if tile == 2 else 1e-5
    assert rel(v2, v) < tol
    assert rel(y2, y) < tol
    dout = rng.standard_normal(y.shape).astype(dtype)
    for a, b in zip(kernels.winograd_conv_backward(dout, v2, wt, x.shape),
                    winograd.winograd_conv_backward(dout, v, wt, x.shape)):
        assert rel(a, b) < tol


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("hw", [(5, 5), (7, 7), (1, 1), (2, 2), (6, 3), (9, 10)])
def test_conv2d_winograd_gradients(rng, backend, hw):
    mv.set_backend(backend)
    layer = Conv2D(3, 4, rng=rng, algorithm="winograd").astype(np.float64)
    layer.bias.data[:] = rng.standard_normal(4)
    errors = check_layer(layer, rng.standard_normal((2, 3) + hw), tol=1e-7)
    assert set(errors) == {"input", "weight", "bias"}


def test_conv2d_algorithms_agree_in_a_layer(rng):
    mv.set_backend("numba")
    a = Conv2D(8, 16, rng=np.random.default_rng(0), algorithm="im2col")
    b = Conv2D(8, 16, rng=np.random.default_rng(0), algorithm="winograd")
    for hw, tol in ((6, F32_TOL), (8, F32_TOL_F4)):   # F(2x2) on 6x6 maps, F(4x4) on 8x8
        x = rng.standard_normal((4, 8, hw, hw)).astype(np.float32)
        for _ in range(2):                         # the second pass reuses the buffers
            ya, yb = a.forward(x), b.forward(x)
            assert b.cache.buffer.shape[0] == (winograd.tile_size(hw, hw) + 2) ** 2
            assert rel(yb, ya) < tol
            dout = rng.standard_normal(ya.shape).astype(np.float32)
            assert rel(b.backward(dout), a.backward(dout)) < tol
            assert rel(b.weight.grad, a.weight.grad) < tol
            assert rel(b.bias.grad, a.bias.grad) < tol
    b.input_grad = False
    b.forward(x)
    assert b.backward(dout) is None


def test_float32_training_follows_im2col(rng):
    """A few SGD steps of a small net: the loss curves of the two algorithms agree."""
    from minivgg.layers import Dense, Flatten, MaxPool2D, ReLU
    from minivgg.losses import SoftmaxCrossEntropy
    from minivgg.models.sequential import Sequential
    mv.set_backend("numba")
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 5, 16)
    curves = []
    for algorithm in ("im2col", "winograd"):
        r = np.random.default_rng(7)
        model = Sequential(Conv2D(3, 8, rng=r, algorithm=algorithm), ReLU(), MaxPool2D(),
                           Conv2D(8, 16, rng=r, algorithm=algorithm), ReLU(), MaxPool2D(),
                           Flatten(), Dense(64, 5, rng=r))
        loss, curve = SoftmaxCrossEntropy(), []
        for _ in range(8):
            curve.append(float(loss.forward(model.forward(x), labels)))
            model.backward(loss.backward())
            for p in model.parameters():
                p.data -= 0.05 * p.grad
        curves.append(curve)
    assert curves[0][-1] < curves[0][0]            # it learns
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-5)


def test_auto_and_errors(rng):
    x = rng.standard_normal((1, 16, 4, 4)).astype(np.float32)
    mv.set_backend("numba")
    assert Conv2D(16, 3).uses_winograd(x)
    assert not Conv2D(3, 3).uses_winograd(x[:, :3])    # a first layer: im2col is faster
    assert not Conv2D(16, 3, stride=2).uses_winograd(x)
    assert not Conv2D(16, 3, kernel_size=5, padding=2).uses_winograd(x)
    assert not Conv2D(16, 3, algorithm="im2col").uses_winograd(x)
    assert Conv2D(3, 3, algorithm="winograd").uses_winograd(x[:, :3])
    mv.set_backend("numpy")
    assert not Conv2D(16, 3).uses_winograd(x)       # the numpy backend is the im2col spec
    assert Conv2D(16, 3, algorithm="winograd").uses_winograd(x)
    with pytest.raises(ValueError, match="Conv2D: algorithm='winograd' needs kernel_size=3"):
        Conv2D(2, 3, stride=2, algorithm="winograd")
    with pytest.raises(ValueError, match="algorithm must be"):
        Conv2D(2, 3, algorithm="fft")
    for cpu_kernels in ("numba", "numpy"):        # the check is shared: both refuse
        mv.set_cpu_kernels(cpu_kernels)
        with pytest.raises(ValueError, match="winograd_conv_forward: out must be"):
            kernels.winograd_conv_forward(x, np.zeros((3, 16, 3, 3), np.float32),
                                          out=np.empty((16, 4, 3), np.float32))
        with pytest.raises(ValueError, match="winograd_conv_forward: tile must be 2 .* got 3"):
            kernels.winograd_conv_forward(x, np.zeros((3, 16, 3, 3), np.float32), tile=3)
        y, v = kernels.winograd_conv_forward(x, np.zeros((3, 16, 3, 3), np.float32))
        with pytest.raises(ValueError, match=r"expected v of shape \(36, 1, 16\).*\(25, 1, 16\)"):
            kernels.winograd_conv_backward(y, v[:25], np.zeros((3, 16, 3, 3), np.float32),
                                           x.shape)


def test_cupy_arrays_are_refused_with_a_clear_message():
    class FakeCupyArray:                            # what dispatch looks at: the module
        __module__ = "cupy._core.core"
    with pytest.raises(NotImplementedError, match="algorithm='im2col'"):
        kernels.winograd_implementation(FakeCupyArray())


@pytest.mark.parametrize("cpu_kernels", ["numpy", "numba"])
def test_winograd_kernels_refuse_mismatched_arguments(rng, cpu_kernels):
    """Gradients and tiles shaped for another input are refused, on both implementations."""
    mv.set_cpu_kernels(cpu_kernels)
    x, wt = rng.standard_normal((4, 3, 6, 6)), rng.standard_normal((5, 3, 3, 3))
    y, v = kernels.winograd_conv_forward(x, wt)
    for wrong in [(2, 5, 6, 6), (8, 5, 6, 6), (4, 5, 5, 6), (4, 5, 6, 7), (4, 4, 6, 6)]:
        with pytest.raises(ValueError, match=rf"winograd_conv_backward: expected dout of shape "
                                             rf"\(4, 5, 6, 6\).*got shape {re.escape(str(wrong))}"):
            kernels.winograd_conv_backward(np.ones(wrong), v, wt, x.shape)
    _, v_small = kernels.winograd_conv_forward(x[:2], wt)
    with pytest.raises(ValueError, match=r"expected v of shape \(16, 36, 3\).*\(16, 18, 3\)"):
        kernels.winograd_conv_backward(y, v_small, wt, x.shape)
    with pytest.raises(ValueError, match=r"expected w of shape \(5, 3, 3, 3\).*\(5, 2, 3, 3\)"):
        kernels.winograd_conv_forward(x, wt[:, :2])
    with pytest.raises(ValueError, match=r"expected bias of shape \(5,\)"):
        kernels.winograd_conv_forward(x, wt, np.zeros(4))
    with pytest.raises(TypeError, match="expected one dtype .* dout float32, v float64"):
        kernels.winograd_conv_backward(y.astype(np.float32), v, wt, x.shape)
    with pytest.raises(TypeError, match="x has dtype float16; the kernels support float32"):
        kernels.winograd_conv_forward(x.astype(np.float16), wt)


@pytest.mark.parametrize("cpu_kernels", ["numpy", "numba"])
def test_conv2d_winograd_refuses_a_gradient_of_another_shape(rng, cpu_kernels):
    """The report of issue 12: a backward after a forward on fewer images must not crash."""
    mv.set_cpu_kernels(cpu_kernels)
    conv = Conv2D(16, 16, 3, padding=1, rng=rng)
    assert conv.uses_winograd(np.zeros((1, 16, 1, 1), np.float32)) == (cpu_kernels == "numba")
    y1 = conv.forward(rng.standard_normal((8, 16, 16, 16)).astype(np.float32))
    y2 = conv.forward(rng.standard_normal((2, 16, 16, 16)).astype(np.float32))
    with pytest.raises(ValueError, match=r"Conv2D: backward: expected a gradient of shape "
                                         r"\(2, 16, 16, 16\).*got \(8, 16, 16, 16\)"):
        conv.backward(np.ones_like(y1))
    assert conv.backward(np.ones_like(y2)).shape == (2, 16, 16, 16)   # the cache survived


def test_the_reported_crash_is_a_value_error_in_a_fresh_process():
    """Exactly the code of the report, run in its own process: it used to abort (SIGABRT)."""
    code = """if True:
        import numpy as np, minivgg as mv; from minivgg.layers import Conv2D
        mv.set_backend("numba"); c = Conv2D(16, 16, 3, padding=1)
        y1 = c.forward(np.random.rand(8,16,16,16).astype(np.float32))
        c.forward(np.random.rand(2,16,16,16).astype(np.float32))
        try:
            c.backward(np.ones_like(y1))
        except ValueError as e:
            print("ValueError:", e)
    """
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ValueError: Conv2D: backward: expected a gradient of shape" in result.stdout


def test_matmul_stack_equals_matmul_and_restores_blas_threads(rng):
    a, b = rng.standard_normal((16, 40, 24)), rng.standard_normal((16, 24, 8))
    api = blas._openblas()
    before = api[0]() if api is not None else None
    out = blas.matmul_stack(a.transpose(0, 2, 1).copy().transpose(0, 2, 1), b,
                            np.empty((16, 40, 8)))
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-13, atol=1e-13)
    if api is not None:
        assert api[0]() == before


def test_gemm_blocks_cover_the_range_evenly():
    assert blas._blocks(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert blas._blocks(1, 2) == [(0, 0), (0, 1)]
    calls = []
    blas._share([(1,), (2,), (3,)], calls.append)   # the first on this thread, all of them
    assert sorted(calls) == [1, 2, 3]
