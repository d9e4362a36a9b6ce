"""Every kernel on every available backend equals the reference kernel.

All kernels here are exact, not merely close:

- im2col, max-pool forward and ReLU only move or select data: bit-for-bit equal.
- col2im and max-pool backward add numbers, and addition order matters in floating point.
  The fast kernels are gathers that, for each input pixel, add its contributions in the
  reference's (i, j) order starting from zero (the reference's ``np.zeros`` + ``+=`` loop
  does exactly that per pixel), with no fastmath and no FMA (there are no products), so
  they too agree bit-for-bit. We therefore test with ``array_equal`` everywhere; any
  reordering in a future kernel would show up here and would need a stated tolerance
  (a sum of at most kh*kw terms: |error| <= kh*kw * eps * sum|terms|).

Every kernel is called through the public functions (minivgg.kernels, api.py), so the
shared checks, allocation and NCHW views are tested together with each backend's loops.
Shapes, strides, paddings, dtypes and memory layouts are drawn by hypothesis. The CUDA
source is also checked on machines without a GPU: tests/test_kernels_cuda.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minivgg as mv
from minivgg import backend, kernels
from minivgg.backend import cupy_problem
from minivgg.kernels import blas, gpu, reference

KERNEL_BACKENDS = [pytest.param("numba", id="numba"),
                   pytest.param("cupy", id="cupy", marks=pytest.mark.gpu)]
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _restore_backend():
    saved = backend._cpu_kernels, backend._device
    yield
    backend._cpu_kernels, backend._device = saved


def kernel_module(name):
    """The public kernels computing on backend ``name``, and the transfers to its arrays."""
    if name == "numba":
        pytest.importorskip("numba")
        from minivgg.kernels import cpu
        mv.set_cpu_kernels("numba")
        assert kernels.implementation(np.zeros(1)) is cpu
        return kernels, np.asarray, np.asarray
    if cupy_problem() is not None:
        pytest.skip("needs CuPy and a CUDA device")
    import cupy
    assert kernels.implementation(cupy.zeros(1)) is gpu
    return kernels, lambda x: device_array(x, cupy), cupy.asnumpy


def device_array(x, xp):
    """``x`` on the device of ``xp`` *with x's strides*: an NHWC view stays an NHWC view.

    ``cupy.asarray`` of a NumPy view copies it to C order, so a GPU test built that way
    would only ever see NCHW memory. Here the memory that ``x`` spans is copied as it is
    and the view rebuilt over it with ``cupy.lib.stride_tricks.as_strided``.
    """
    x = np.asarray(x)
    if xp is np or x.flags.c_contiguous or x.size == 0:
        out = xp.asarray(x)
    else:
        span = 1 + sum((d - 1) * st for d, st in zip(x.shape, x.strides)) // x.itemsize
        memory = np.lib.stride_tricks.as_strided(x, (span,), (x.itemsize,)).copy()
        out = xp.lib.stride_tricks.as_strided(xp.asarray(memory), x.shape, x.strides)
    assert x.size == 0 or tuple(out.strides) == tuple(x.strides)
    return out


def layouts(x, kind):
    """The same logical NCHW array in three memory layouts."""
    if kind == "nchw":
        return x
    if kind == "nhwc":      # what a convolution hands to the next layer
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    big = np.zeros(x.shape[:3] + (2 * x.shape[3],), dtype=x.dtype)   # strided, not dense
    big[..., ::2] = x
    return big[..., ::2]


@st.composite
def conv_cases(draw):
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, 2))
    h = draw(st.integers(max(1, k - 2 * p), 9))
    w = draw(st.integers(max(1, k - 2 * p), 9))
    # channels on both sides of cpu.FEW_CHANNELS (8): the two loops of Numba's im2col
    return dict(n=draw(st.integers(1, 3)), c=draw(st.sampled_from([1, 2, 3, 5, 8, 9])),
                h=h, w=w, k=k, s=s, p=p,
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                layout=draw(st.sampled_from(["nchw", "nhwc", "strided"])),
                seed=draw(st.integers(0, 2**31)))


@st.composite
def pool_cases(draw):
    k = draw(st.integers(1, 3))
    s = draw(st.integers(1, 3))
    return dict(n=draw(st.integers(1, 3)), c=draw(st.integers(1, 5)),
                h=draw(st.integers(k, 9)), w=draw(st.integers(k, 9)), k=k, s=s,
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                layout=draw(st.sampled_from(["nchw", "nhwc", "strided"])),
                ties=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


def assert_same(actual, expected):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@SETTINGS
@given(case=conv_cases())
def test_im2col_and_col2im_equal_reference(backend, case):
    mod, to_dev, to_host = kernel_module(backend)
    n, c, h, w, k, s, p = (case[key] for key in "n c h w k s p".split())
    rng = np.random.default_rng(case["seed"])
    x = layouts(rng.standard_normal((n, c, h, w)).astype(case["dtype"]), case["layout"])
    cols = reference.im2col(x, k, k, s, p)
    assert_same(to_host(mod.im2col(to_dev(x), k, k, s, p)), cols)
    dcols = rng.standard_normal(cols.shape).astype(case["dtype"])
    assert_same(to_host(mod.col2im(to_dev(dcols), x.shape, k, k, s, p)),
                reference.col2im(dcols, x.shape, k, k, s, p))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@SETTINGS
@given(case=conv_cases())
def test_im2col_planes_is_im2col_transposed(backend, case):
    mod, to_dev, to_host = kernel_module(backend)
    n, c, h, w, k, s, p = (case[key] for key in "n c h w k s p".split())
    rng = np.random.default_rng(case["seed"])
    x = layouts(rng.standard_normal((n, c, h, w)).astype(case["dtype"]), case["layout"])
    expected = np.ascontiguousarray(reference.im2col(x, k, k, s, p).T)
    assert_same(reference.im2col_planes(x, k, k, s, p), expected)
    assert_same(to_host(mod.im2col_planes(to_dev(x), k, k, s, p)), expected)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_im2col_planes_writes_into_a_given_buffer(backend, rng):
    mod, to_dev, to_host = kernel_module(backend)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    out = to_dev(np.full((27, 50), np.nan, dtype=np.float32))
    assert mod.im2col_planes(to_dev(x), 3, 3, 1, 1, out=out) is out
    assert_same(to_host(out), reference.im2col(x, 3, 3, 1, 1).T)
    with pytest.raises(ValueError, match="im2col_planes: out must be"):
        mod.im2col_planes(to_dev(x), 3, 3, 1, 1, out=to_dev(np.empty((50, 27), np.float32)))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_im2col_writes_into_a_given_buffer(backend, rng):
    mod, to_dev, to_host = kernel_module(backend)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    out = to_dev(np.full((50, 27), np.nan, dtype=np.float32))
    assert mod.im2col(to_dev(x), 3, 3, 1, 1, out=out) is out
    assert_same(to_host(out), reference.im2col(x, 3, 3, 1, 1))
    with pytest.raises(ValueError, match="im2col: out must be"):
        mod.im2col(to_dev(x), 3, 3, 1, 1, out=to_dev(np.empty((50, 26), np.float32)))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@SETTINGS
@given(case=pool_cases())
def test_maxpool_equals_reference(backend, case):
    mod, to_dev, to_host = kernel_module(backend)
    n, c, h, w, k, s = (case[key] for key in "n c h w k s".split())
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((n, c, h, w))
    if case["ties"]:          # few distinct values: many windows with several maxima
        x = np.round(x)
    x = layouts(x.astype(case["dtype"]), case["layout"])
    out, argmax = reference.maxpool_forward(x, k, s)
    out2, argmax2 = mod.maxpool_forward(to_dev(x), k, s)
    assert_same(to_host(out2), out)
    np.testing.assert_array_equal(to_host(argmax2), argmax)   # compact dtype, same values
    dout = rng.standard_normal(out.shape).astype(case["dtype"])
    assert_same(to_host(mod.maxpool_backward(to_dev(dout), argmax2, x.shape, k, s)),
                reference.maxpool_backward(dout, argmax, x.shape, k, s))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("k, s, h, w", [(2, 2, 7, 9), (2, 2, 8, 8), (3, 3, 10, 8), (2, 3, 8, 7),
                                        (3, 2, 7, 7)])
def test_maxpool_backward_writes_every_pixel(backend, k, s, h, w, rng, monkeypatch):
    """dx comes from uninitialised memory: every pixel must be written, those in no window
    (past the last one, or between windows) with 0. Filled with NaN here to show a miss."""
    from minivgg.kernels import api
    mod, to_dev, to_host = kernel_module(backend)
    monkeypatch.setattr(api, "_empty", lambda like, shape, dtype: to_dev(
        np.full(shape, np.nan if np.dtype(dtype).kind == "f" else 0, dtype=dtype)))
    x = rng.permutation(2 * 3 * h * w).reshape(2, 3, h, w).astype(np.float32)  # no ties
    out, argmax = reference.maxpool_forward(x, k, s)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    _, argmax2 = mod.maxpool_forward(to_dev(x), k, s)
    assert_same(to_host(mod.maxpool_backward(to_dev(dout), argmax2, x.shape, k, s)),
                reference.maxpool_backward(dout, argmax, x.shape, k, s))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("k, s", [(2, 2), (3, 2), (3, 1)])
def test_maxpool_nan_and_ties_like_reference(backend, k, s, rng):
    """A NaN in a window wins (the first NaN), as np.argmax does; ties go to the first max."""
    mod, to_dev, to_host = kernel_module(backend)
    for dtype in (np.float32, np.float64):
        x = np.round(rng.standard_normal((3, 37, 9, 8))).astype(dtype)   # many ties
        x[rng.random(x.shape) < 0.1] = np.nan
        x[0, 0] = np.nan                                              # windows of NaNs only
        out, argmax = reference.maxpool_forward(x, k, s)
        out2, argmax2 = mod.maxpool_forward(to_dev(x), k, s)
        assert np.isnan(out).any()
        np.testing.assert_array_equal(to_host(out2), out)            # NaN where NaN
        np.testing.assert_array_equal(to_host(argmax2), argmax)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_equals_reference(backend, layout, dtype, rng):
    mod, to_dev, to_host = kernel_module(backend)
    x = np.round(rng.standard_normal((2, 3, 4, 5)) * 2) / 2      # exact zeros included
    x[1, 2, 3, 4] = np.nan                                        # must survive, not become 0
    x = layouts(x.astype(dtype), layout)
    y, mask = reference.relu_forward(x)
    y2, mask2 = mod.relu_forward(to_dev(x))
    assert np.isnan(y[1, 2, 3, 4]) and not mask[1, 2, 3, 4]
    assert_same(to_host(y2), y)
    assert_same(to_host(mask2), mask)
    dout = layouts(rng.standard_normal(x.shape).astype(dtype), layout)
    assert_same(to_host(mod.relu_backward(to_dev(dout), mask2)),
                reference.relu_backward(dout, mask))
    flat = rng.standard_normal((7, 5)).astype(dtype)            # and 2-D, as after Dense
    y, mask = reference.relu_forward(flat)
    assert_same(to_host(mod.relu_forward(to_dev(flat))[0]), y)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 4), (4099, 75, 64), (64, 9001, 27)],
                         ids=["small", "tall", "long"])      # small runs on one thread
def test_matmul_equals_reference(backend, dtype, shape, rng):
    """GEMMs may sum in another order than the reference (BLAS blocking, rows shared out
    among threads), so the bound is the classical one for any summation order:
    |error| <= k * eps * (|a| @ |b|) entrywise."""
    mod, to_dev, to_host = kernel_module(backend)
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype).T             # a transposed view, as W.T
    expected = reference.matmul(a, b)
    bound = k * np.finfo(dtype).eps * (np.abs(a).astype(np.float64) @ np.abs(b))
    threads = blas._openblas()[0]() if blas._openblas() else None
    for left in (a, np.ascontiguousarray(a.T).T):              # also dY.T @ cols's operand
        got = to_host(mod.matmul(to_dev(left), to_dev(b)))
        assert got.dtype == dtype and got.shape == (m, n)
        assert np.all(np.abs(got - expected) <= bound)
    for left in (a, np.ascontiguousarray(a.T).T):              # "long" + column-major: the
        out = to_dev(np.full((m, n), np.nan, dtype=dtype))      # product is done transposed
        assert mod.matmul(to_dev(left), to_dev(b), out=out) is out
        assert np.all(np.abs(to_host(out) - expected) <= bound)
    bias = rng.standard_normal(n).astype(dtype)                # a layer's x @ W + b
    for left in (a, np.ascontiguousarray(a.T).T):
        got = to_host(mod.matmul(to_dev(left), to_dev(b), bias=to_dev(bias)))
        assert np.all(np.abs(got - (expected + bias)) <= bound + np.finfo(dtype).eps
                      * np.abs(expected + bias))
    if threads is not None:
        assert blas._openblas()[0]() == threads                 # BLAS threads restored


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_nhwc_memory_stays_nhwc(backend, rng):
    """A conv output (NCHW view of NHWC) stays NHWC through ReLU, pooling and batch norm,
    forward and backward: no copies to NCHW. On the GPU the input is a real NHWC view of
    device memory (device_array), as Conv2D hands it on."""
    k, to_dev, to_host = kernel_module(backend)
    host = np.ascontiguousarray(rng.standard_normal((2, 4, 4, 3))).transpose(0, 3, 1, 2)
    x = to_dev(host)
    assert x.transpose(0, 2, 3, 1).flags.c_contiguous
    y, mask = k.relu_forward(x)
    out, argmax = k.maxpool_forward(y, 2, 2)
    dx = k.maxpool_backward(out, argmax, y.shape, 2, 2)
    dr = k.relu_backward(dx, mask)
    mean, var = k.batchnorm_statistics(x)
    v = to_dev(np.ones(3))
    bn, xhat = k.batchnorm_normalize(x, mean, v, v, v)
    dbn, _, _ = k.batchnorm_backward(bn, xhat, v, v, True)
    for a in (y, mask, out, dx, dr, bn, xhat, dbn):
        assert a.transpose(0, 2, 3, 1).flags.c_contiguous
    assert_same(to_host(y), reference.relu_forward(host)[0])


def test_device_array_keeps_the_strides_on_a_fake_cupy(monkeypatch, rng):
    """The helper the GPU tests build their inputs with: NHWC and gapped views survive."""
    from tests import fake_cupy
    cupy = fake_cupy.install(monkeypatch)
    for kind in ("nchw", "nhwc", "strided"):
        x = layouts(rng.standard_normal((2, 3, 4, 5)), kind)
        d = device_array(x, cupy)
        assert type(d) is cupy.ndarray and d.strides == x.strides
        assert_same(np.asarray(d), x)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_kernels_with_subnormal_inputs_follow_flush_to_zero(dtype):
    """CuPy compiles with -ftz=true: float32 results are the reference's in flush-to-zero
    arithmetic (tests/ftz.py), bit for bit; float64 results are the reference's."""
    from tests import ftz
    mod, to_dev, to_host = kernel_module("cupy")
    rng = np.random.default_rng(3)
    x = layouts(ftz.edge_values(rng, (2, 3, 6, 5), dtype), "nhwc")
    ftz.same_bits(to_host(mod.im2col(to_dev(x), 3, 3, 1, 1)), ftz.expected("im2col", x, 3, 3, 1, 1))
    cols = ftz.edge_values(rng, (2 * 6 * 5, 27), dtype)
    ftz.same_bits(to_host(mod.col2im(to_dev(cols), x.shape, 3, 3, 1, 1)),
                  ftz.expected("col2im", cols, x.shape, 3, 3, 1, 1))
    out, argmax = mod.maxpool_forward(to_dev(x), 2, 1)
    want_out, want_arg = ftz.expected("maxpool_forward", x, 2, 1)
    ftz.same_bits(to_host(out), want_out)
    np.testing.assert_array_equal(to_host(argmax), want_arg)
    dout = ftz.edge_values(rng, want_out.shape, dtype)
    ftz.same_bits(to_host(mod.maxpool_backward(to_dev(dout), argmax, x.shape, 2, 1)),
                  ftz.expected("maxpool_backward", dout, want_arg, x.shape, 2, 1))
    y, mask = mod.relu_forward(to_dev(x))
    want_y, want_mask = ftz.expected("relu_forward", x)
    ftz.same_bits(to_host(y), want_y)
    np.testing.assert_array_equal(to_host(mask), want_mask)


def test_numba_pools_large_windows_with_an_int32_argmax(rng):
    k, _, _ = kernel_module("numba")
    x = rng.standard_normal((1, 2, 17, 18))
    out, argmax = k.maxpool_forward(x, 17, 1)
    ref_out, ref_argmax = reference.maxpool_forward(x, 17, 1)
    assert argmax.dtype == np.int32
    assert_same(out, ref_out)
    np.testing.assert_array_equal(argmax, ref_argmax)
    dout = rng.standard_normal(out.shape)
    assert_same(k.maxpool_backward(dout, argmax, x.shape, 17, 1),
                reference.maxpool_backward(dout, ref_argmax, x.shape, 17, 1))


# -- dispatch and scratch buffers ---------------------------------------------------------------

def test_dispatch_is_by_module_identity(monkeypatch):
    from minivgg.kernels import cpu, winograd, winograd_cpu
    x = np.zeros((1, 16, 2, 2), np.float32)
    mv.set_cpu_kernels("numpy")
    assert kernels.implementation(x) is reference
    assert kernels.winograd_implementation(x) is winograd
    assert not kernels.winograd_preferred(x)          # the reference stays the im2col spec
    mv.set_cpu_kernels("numba")
    assert kernels.implementation(x) is cpu
    assert kernels.winograd_implementation(x) is winograd_cpu
    assert kernels.winograd_preferred(x) and not kernels.winograd_preferred(x[:, :3])
    monkeypatch.setattr(cpu, "__name__", "renamed")  # names play no part
    assert kernels.winograd_implementation(x) is winograd_cpu and kernels.winograd_preferred(x)

    class FakeCupyArray:                              # what dispatch looks at: the type's module
        __module__ = "cupy._core.core"
        shape = (1, 16, 2, 2)
    assert kernels.implementation(FakeCupyArray()) is gpu
    assert not kernels.winograd_preferred(FakeCupyArray())


def test_workspace_reuses_memory_and_replaces_what_does_not_fit():
    ws = kernels.Workspace()
    a = ws.buffer("cols", (4, 5), np.float32)
    b = ws.buffer("cols", (2, 5), np.float32)        # smaller: a view of the same memory
    assert b.shape == (2, 5) and b.flags.c_contiguous and np.shares_memory(a, b)
    c = ws.buffer("cols", (5, 5), np.float32)        # larger: fresh memory
    assert not np.shares_memory(a, c)
    d = ws.buffer("cols", (5, 5), np.float64)        # another dtype: fresh memory
    assert d.dtype == np.float64 and not np.shares_memory(c, d)
    assert not np.shares_memory(ws.buffer("other", (25,), np.float64), d)
    assert ws.nbytes == 2 * 25 * 8
    ws.clear()
    assert ws.nbytes == 0
    import threading
    seen = []
    thread = threading.Thread(target=lambda: seen.append(kernels.thread_workspace()))
    thread.start()
    thread.join()
    assert kernels.thread_workspace() is kernels.thread_workspace() is not seen[0]


@pytest.mark.parametrize("cpu_kernels,algorithm,channels", [
    ("numpy", "im2col", 16), ("numba", "im2col", 16), ("numba", "im2col", 3),   # 3: planes
    ("numba", "winograd", 16)])
def test_conv2d_reuses_its_buffer_from_step_to_step(cpu_kernels, algorithm, channels, rng):
    """The next forward writes its cols (or tiles) where the last backward's dcols were."""
    from minivgg.layers import Conv2D
    mv.set_cpu_kernels(cpu_kernels)
    conv = Conv2D(channels, 8, rng=rng, algorithm=algorithm)
    x = rng.standard_normal((2, channels, 6, 6)).astype(np.float32)
    y = conv.forward(x)
    first = conv.cache.buffer
    grad = conv.weight.grad
    conv.backward(np.ones_like(y))
    assert conv.weight.grad is grad                   # dW written into .grad
    conv.forward(x[:1])                                # a smaller batch fits in the same memory
    assert np.shares_memory(first, conv.cache.buffer)


@pytest.mark.parametrize("input_grad", [True, False])
def test_conv2d_with_few_channels_takes_planes_and_computes_the_same(rng, monkeypatch,
                                                                     input_grad):
    """An RGB layer on the Numba kernels writes its columns as planes (im2col transposed):
    forward, dW, dbias and dx (dcols written over the planes' memory) as with rows."""
    from minivgg.layers import Conv2D
    mv.set_cpu_kernels("numba")
    conv = Conv2D(3, 5, rng=rng, dtype=np.float64)
    conv.input_grad = input_grad
    x = rng.standard_normal((3, 3, 7, 6))
    dout = rng.standard_normal((3, 5, 7, 6))

    def run():
        y = conv.forward(x)
        layout = conv.cache.buffer.flags.c_contiguous
        dx = conv.backward(dout)
        return y, dx, conv.weight.grad.copy(), conv.bias.grad.copy(), layout

    assert kernels.im2col_by_planes(x)
    planes = run()
    assert planes[-1] is False                       # column-major: the transposed planes
    monkeypatch.setattr(kernels, "im2col_by_planes", lambda x: False)
    rows = run()
    assert rows[-1] is True
    for a, b in zip(planes[:4], rows[:4]):
        if a is None:
            assert b is None and not input_grad
            continue
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


def test_planes_only_for_few_channels_on_numba():
    mv.set_cpu_kernels("numba")
    assert kernels.im2col_by_planes(np.zeros((1, 7, 4, 4)))
    assert not kernels.im2col_by_planes(np.zeros((1, 8, 4, 4)))
    mv.set_cpu_kernels("numpy")                      # the reference builds rows, as taught
    assert not kernels.im2col_by_planes(np.zeros((1, 3, 4, 4)))


@pytest.mark.parametrize("cpu_kernels,algorithm", [("numpy", "im2col"), ("numba", "im2col"),
                                                   ("numba", "winograd")])
def test_inference_layers_share_one_scratch_buffer(cpu_kernels, algorithm, rng):
    """Under no_grad nothing is kept for backward: the layers' scratch is the thread's, so
    a deep network holds one column matrix (not one per layer), and the result is the same."""
    from minivgg.layers import Conv2D
    from minivgg.modes import no_grad
    mv.set_cpu_kernels(cpu_kernels)
    a, b = (Conv2D(16, 16, rng=rng, algorithm=algorithm) for _ in range(2))
    x = rng.standard_normal((2, 16, 6, 6)).astype(np.float32)
    with_grad = b.forward(a.forward(x))
    a._workspace.clear()
    b._workspace.clear()
    with no_grad():
        y = b.forward(a.forward(x))
    np.testing.assert_array_equal(y, with_grad)
    assert a._workspace.nbytes == b._workspace.nbytes == 0
    assert kernels.thread_workspace().nbytes > 0


# -- the checks every implementation shares (api.py, checks.py) -------------------------------

ALL_BACKENDS = [pytest.param("numpy", id="numpy"), *KERNEL_BACKENDS]


def public_kernels(name):
    if name == "numpy":
        mv.set_cpu_kernels("numpy")
        return kernels, np.asarray
    return kernel_module(name)[:2]


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float16, np.int32])
def test_unsupported_dtypes_raise_a_type_error_naming_the_supported_ones(backend_name, dtype):
    k, dev = public_kernels(backend_name)
    x, cols = dev(np.ones((1, 2, 4, 4), dtype)), dev(np.ones((16, 18), dtype))
    calls = {
        "im2col": lambda: k.im2col(x, 3, 3, 1, 1),
        "col2im": lambda: k.col2im(cols, (1, 2, 4, 4), 3, 3, 1, 1),
        "maxpool_forward": lambda: k.maxpool_forward(x),
        "maxpool_backward": lambda: k.maxpool_backward(dev(np.ones((1, 2, 2, 2), dtype)),
                                                       dev(np.zeros((1, 2, 2, 2), np.uint8)),
                                                       (1, 2, 4, 4)),
        "relu_forward": lambda: k.relu_forward(x),
        "relu_backward": lambda: k.relu_backward(x, dev(np.ones(x.shape, bool))),
        "matmul": lambda: k.matmul(cols, dev(np.ones((18, 3), dtype))),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=rf"{name}: \w+ has dtype {np.dtype(dtype)}; "
                                            "the kernels support float32 and float64"):
            call()


def _shape_error(kernel, name, expected, got):
    return pytest.raises(ValueError, match=rf"{kernel}: expected {name} of shape "
                                           rf"{re.escape(str(expected))}.*got shape "
                                           rf"{re.escape(str(got))}")


WRONG_X_SHAPES = [(2, 3, 6, 6), (8, 3, 6, 6), (4, 3, 5, 6), (4, 3, 6, 4), (4, 2, 6, 6)]


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
@pytest.mark.parametrize("wrong", WRONG_X_SHAPES,
                         ids=["fewer", "more", "height", "width", "channels"])
def test_backward_kernels_refuse_a_gradient_of_another_shape(backend_name, wrong, rng):
    """A gradient shaped for another input (fewer or more images, another H x W or channel
    count) is refused before any loop runs: a ValueError with both shapes, never a crash."""
    k, dev = public_kernels(backend_name)
    x = dev(rng.standard_normal((4, 3, 6, 6)))
    other = dev(rng.standard_normal(wrong))
    cols, dcols = k.im2col(x, 3, 3, 1, 1), k.im2col(other, 3, 3, 1, 1)
    with _shape_error("col2im", "cols", cols.shape, dcols.shape):
        k.col2im(dcols, x.shape, 3, 3, 1, 1)
    out, argmax = k.maxpool_forward(x, 2, 2)
    dout, wrong_argmax = k.maxpool_forward(other, 2, 2)
    with _shape_error("maxpool_backward", "dout", out.shape, dout.shape):
        k.maxpool_backward(dout, argmax, x.shape, 2, 2)
    with _shape_error("maxpool_backward", "argmax", out.shape, dout.shape):
        k.maxpool_backward(out, wrong_argmax, x.shape, 2, 2)
    _, mask = k.relu_forward(x)
    with _shape_error("relu_backward", "dout", x.shape, other.shape):
        k.relu_backward(other, mask)


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
def test_bad_sizes_buffers_and_operands_are_refused(backend_name):
    k, dev = public_kernels(backend_name)
    x = dev(np.ones((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="im2col: a 5x5 window does not fit the 4x4 input"):
        k.im2col(x, 5, 5, 1, 0)
    with pytest.raises(ValueError, match="im2col: stride must be an int >= 1, got 0"):
        k.im2col(x, 3, 3, 0, 1)
    with pytest.raises(ValueError, match="maxpool_forward: k must be an int >= 1, got 2.5"):
        k.maxpool_forward(x, 2.5)
    with pytest.raises(ValueError, match=r"col2im: x_shape must be 4 non-negative ints"):
        k.col2im(dev(np.ones((16, 18))), (1, 2, 4), 3, 3, 1, 1)
    with pytest.raises(ValueError, match=r"matmul: a \(3, 4\) has 4 columns but b \(5, 2\)"):
        k.matmul(dev(np.ones((3, 4))), dev(np.ones((5, 2))))
    with pytest.raises(ValueError, match=r"matmul: out must be a C-contiguous float64 .*\(3, 2\)"):
        k.matmul(dev(np.ones((3, 4))), dev(np.ones((4, 2))), out=dev(np.empty((2, 3))))
    with pytest.raises(TypeError, match="matmul: expected one dtype .* a float64, b float32"):
        k.matmul(dev(np.ones((3, 4))), dev(np.ones((4, 2), np.float32)))
    with pytest.raises(TypeError, match="relu_backward: mask must be a boolean array"):
        k.relu_backward(x, x)
    with pytest.raises(TypeError, match="maxpool_backward: argmax must be an integer array"):
        k.maxpool_backward(dev(np.ones((1, 2, 2, 2))), dev(np.ones((1, 2, 2, 2))), x.shape)


def test_matmul_refuses_a_bias_of_the_wrong_shape_naming_it():
    a, b = np.ones((4, 3), np.float32), np.ones((3, 5), np.float32)
    with pytest.raises(ValueError, match=r"matmul: expected bias of shape \(5,\)"):
        kernels.matmul(a, b, bias=np.ones(4, np.float32))
