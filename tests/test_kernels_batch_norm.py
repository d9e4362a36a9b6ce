"""The batch-norm kernels (kernels/batch_norm.py) on every backend equal the reference.

The compiled loops add in another order than NumPy (blocks of rows, in float64), so the
comparison has a tolerance: float64 results to ~1e-12 relative, float32 to the rounding of
a float32 value (the reference itself accumulates its sums in float32). Layouts, shapes
and dtypes are drawn by hypothesis, as in test_kernels.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_kernels import KERNEL_BACKENDS, SETTINGS, kernel_module, layouts

from minivgg import backend, kernels
from minivgg.kernels import reference

TOL = {np.float64: dict(rtol=1e-11, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-5)}


@pytest.fixture(autouse=True)
def _restore_backend():
    saved = backend._cpu_kernels, backend._device
    yield
    backend._cpu_kernels, backend._device = saved


@st.composite
def bn_cases(draw):
    return dict(n=draw(st.integers(1, 4)), c=draw(st.integers(1, 7)),
                h=draw(st.integers(1, 6)), w=draw(st.integers(1, 6)),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                layout=draw(st.sampled_from(["nchw", "nhwc", "strided"])),
                batch_statistics=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


def close(actual, expected, dtype):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


@pytest.mark.parametrize("backend_name", KERNEL_BACKENDS)
@SETTINGS
@given(case=bn_cases())
def test_batchnorm_kernels_equal_reference(backend_name, case):
    k, dev, host = kernel_module(backend_name)
    rng = np.random.default_rng(case["seed"])
    n, c, h, w, dtype = (case[key] for key in ("n", "c", "h", "w", "dtype"))
    x = (3.0 + 2.0 * rng.standard_normal((n, c, h, w))).astype(dtype)
    dout = rng.standard_normal((n, c, h, w)).astype(dtype)
    gamma, beta = (rng.standard_normal(c).astype(dtype) for _ in range(2))

    mean, var = k.batchnorm_statistics(dev(layouts(x, case["layout"])))
    ref_mean, ref_var = reference.batchnorm_statistics(x)
    close(host(mean), ref_mean, dtype)
    close(host(var), ref_var, dtype)

    inv_std = (1 / np.sqrt(ref_var + 1e-5)).astype(dtype)
    y, xhat = k.batchnorm_normalize(dev(layouts(x, case["layout"])), dev(ref_mean),
                                    dev(inv_std), dev(gamma), dev(beta))
    ref_y, ref_xhat = reference.batchnorm_normalize(x, ref_mean, inv_std, gamma, beta)
    close(host(y), ref_y, dtype)
    close(host(xhat), ref_xhat, dtype)

    got = k.batchnorm_backward(dev(layouts(dout, case["layout"])), dev(ref_xhat), dev(gamma),
                               dev(inv_std), case["batch_statistics"])
    want = reference.batchnorm_backward(dout, ref_xhat, gamma, inv_std,
                                        case["batch_statistics"])
    scale = np.abs(want[0]).max() + 1.0          # dx is a difference of similar terms
    np.testing.assert_allclose(host(got[0]), want[0], rtol=0, atol=TOL[dtype]["atol"] * scale)
    assert host(got[0]).dtype == want[0].dtype
    for g, r in zip(got[1:], want[1:]):           # dgamma, dbeta: sums over N*H*W values
        np.testing.assert_allclose(host(g), r, rtol=TOL[dtype]["rtol"] * 10,
                                   atol=TOL[dtype]["atol"] * n * h * w)


@pytest.mark.parametrize("backend_name", ["numpy", *KERNEL_BACKENDS])
@SETTINGS
@given(case=bn_cases())
def test_relu_fused_into_batch_norm_equals_batch_norm_then_relu(backend_name, case):
    """relu=True: forward is the reference's batch norm, then its ReLU; backward is the
    ReLU's backward (with the reference's mask of y), then batch norm's."""
    if backend_name == "numpy":
        from minivgg import kernels as k
        backend.set_cpu_kernels("numpy")
        dev = host = np.asarray
    else:
        k, dev, host = kernel_module(backend_name)
    rng = np.random.default_rng(case["seed"])
    n, c, h, w, dtype = (case[key] for key in ("n", "c", "h", "w", "dtype"))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    dout = rng.standard_normal((n, c, h, w)).astype(dtype)
    mean, inv_std, gamma, beta = (rng.standard_normal(c).astype(dtype) for _ in range(4))
    inv_std = np.abs(inv_std) + dtype(0.5)
    ref_y, ref_xhat = reference.batchnorm_normalize(x, mean, inv_std, gamma, beta)
    ref_y, mask = reference.relu_forward(ref_y)
    want = reference.batchnorm_backward(reference.relu_backward(dout, mask), ref_xhat, gamma,
                                        inv_std, case["batch_statistics"])

    y, xhat = k.batchnorm_normalize(dev(layouts(x, case["layout"])), dev(mean), dev(inv_std),
                                    dev(gamma), dev(beta), relu=True)
    close(host(y), ref_y, dtype)
    close(host(xhat), ref_xhat, dtype)
    assert (host(y) >= 0).all()
    np.testing.assert_array_equal(host(k.batchnorm_normalize(
        dev(x), dev(mean), dev(inv_std), dev(gamma), dev(beta), keep_xhat=False,
        relu=True)[0]), host(y))
    got = k.batchnorm_backward(dev(layouts(dout, case["layout"])), xhat, dev(gamma),
                               dev(inv_std), case["batch_statistics"], relu=True,
                               beta=dev(beta))
    scale = np.abs(want[0]).max() + 1.0
    np.testing.assert_allclose(host(got[0]), want[0], rtol=0, atol=TOL[dtype]["atol"] * scale)
    for g, r in zip(got[1:], want[1:]):
        np.testing.assert_allclose(host(g), r, rtol=TOL[dtype]["rtol"] * 10,
                                   atol=TOL[dtype]["atol"] * n * h * w)


@pytest.mark.parametrize("backend_name", KERNEL_BACKENDS)
def test_fused_relu_gives_the_same_bits_as_the_relu_kernels(backend_name, rng):
    """On one backend, batch norm with relu=True and batch norm followed by that backend's
    own ReLU kernels compute the same numbers exactly, both ways (the mask recomputed from
    xhat is the mask of y), so fusing them changes no result."""
    k, dev, host = kernel_module(backend_name)
    x, dout = (dev(layouts(rng.standard_normal((4, 6, 5, 7)).astype(np.float32), "nhwc"))
               for _ in range(2))
    mean, var = k.batchnorm_statistics(x)
    inv_std = 1 / (var + 1e-5) ** 0.5
    gamma, beta = (dev(rng.standard_normal(6).astype(np.float32)) for _ in range(2))
    y, xhat = k.batchnorm_normalize(x, mean, inv_std, gamma, beta)
    y, mask = k.relu_forward(y)
    fused_y, fused_xhat = k.batchnorm_normalize(x, mean, inv_std, gamma, beta, relu=True)
    np.testing.assert_array_equal(host(fused_y), host(y))
    np.testing.assert_array_equal(host(fused_xhat), host(xhat))
    for batch_statistics in (True, False):
        want = k.batchnorm_backward(k.relu_backward(dout, mask), xhat, gamma, inv_std,
                                    batch_statistics)
        got = k.batchnorm_backward(dout, xhat, gamma, inv_std, batch_statistics, relu=True,
                                   beta=beta)
        for g, r in zip(got, want):
            np.testing.assert_array_equal(host(g), host(r))


def test_fused_relu_needs_beta():
    x = np.ones((1, 2, 2, 2), np.float32)
    v = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="batchnorm_backward: relu=True needs beta"):
        kernels.batchnorm_backward(x, x, v, v, True, relu=True)


@pytest.mark.parametrize("backend_name", KERNEL_BACKENDS)
def test_statistics_stay_accurate_when_the_mean_dwarfs_the_spread(backend_name):
    """float32 values around 1e4 with spread 1: E[x^2] - E[x]^2 in float32 would lose every
    digit of the variance; the shifted float64 sums keep it (against float64 truth)."""
    k, dev, host = kernel_module(backend_name)
    rng = np.random.default_rng(0)
    x64 = 1e4 + rng.standard_normal((8, 3, 16, 16))
    x = x64.astype(np.float32)
    mean, var = k.batchnorm_statistics(dev(x))
    truth = x.astype(np.float64)
    np.testing.assert_allclose(host(mean), truth.mean(axis=(0, 2, 3)), rtol=1e-7)
    np.testing.assert_allclose(host(var), truth.var(axis=(0, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("backend_name", KERNEL_BACKENDS)
def test_outputs_keep_nhwc_memory_and_xhat_is_optional(backend_name, rng):
    k, dev, host = kernel_module(backend_name)
    x = layouts(rng.standard_normal((2, 5, 4, 3)), "nhwc")
    ones, zeros = np.ones(5), np.zeros(5)
    y, xhat = k.batchnorm_normalize(dev(x), dev(zeros), dev(ones), dev(ones), dev(zeros),
                                    keep_xhat=False)
    assert xhat is None
    np.testing.assert_allclose(host(y), x, rtol=1e-15)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous          # an NCHW view of NHWC


@pytest.mark.parametrize("backend_name", ["numpy", *KERNEL_BACKENDS])
def test_batchnorm_kernels_refuse_bad_arguments_naming_themselves(backend_name):
    if backend_name == "numpy":
        from minivgg import kernels as k
        backend.set_cpu_kernels("numpy")
        dev = np.asarray
    else:
        k, dev, _ = kernel_module(backend_name)
    x = dev(np.ones((2, 3, 4, 4), np.float32))
    v3 = dev(np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"batchnorm_normalize: expected gamma of shape \(3,\)"):
        k.batchnorm_normalize(x, v3, v3, dev(np.ones(4, np.float32)), v3)
    with pytest.raises(TypeError, match="batchnorm_normalize: expected one dtype"):
        k.batchnorm_normalize(x, v3, v3, dev(np.ones(3)), v3)
    with pytest.raises(ValueError,
                       match=r"batchnorm_backward: expected dout of shape \(2, 3, 4, 4\)"):
        k.batchnorm_backward(dev(np.ones((2, 3, 4, 5), np.float32)), x, v3, v3, True)
    with pytest.raises(TypeError, match="batchnorm_statistics: x has dtype int32"):
        k.batchnorm_statistics(dev(np.ones((2, 3, 4, 4), np.int32)))


# -- the GPU path (kernels/gpu_channels.py), on a NumPy stand-in for CuPy --------------------

@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_statistics", [True, False])
def test_gpu_batch_norm_path_on_a_fake_cupy(monkeypatch, layout, dtype, batch_statistics):
    """The GPU branch (cuBLAS sums, fused elementwise kernels) run with NumPy in place of
    CuPy: the reference's values to rounding, NHWC outputs whatever the input's layout,
    and each elementwise kernel built once however often it runs."""
    from test_kernels import device_array

    from minivgg import kernels as k
    from tests import fake_cupy
    cupy = fake_cupy.install(monkeypatch)
    rng = np.random.default_rng(5)
    n, c, h, w = 3, 4, 5, 6
    x = (3.0 + 2.0 * rng.standard_normal((n, c, h, w))).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    gamma, beta = (rng.standard_normal(c).astype(dtype) for _ in range(2))

    def dev(a):
        return device_array(layouts(a, layout) if a.ndim == 4 else a, cupy)
    for _ in range(2):
        mean, var = k.batchnorm_statistics(dev(x))
        ref_mean, ref_var = reference.batchnorm_statistics(x)
        close(mean, ref_mean, dtype)
        close(var, ref_var, dtype)
        inv_std = (1 / np.sqrt(ref_var + 1e-5)).astype(dtype)
        y, xhat = k.batchnorm_normalize(dev(x), dev(ref_mean), dev(inv_std), dev(gamma),
                                        dev(beta))
        ref_y, ref_xhat = reference.batchnorm_normalize(x, ref_mean, inv_std, gamma, beta)
        close(y, ref_y, dtype)
        close(xhat, ref_xhat, dtype)
        dx, dgamma, dbeta = k.batchnorm_backward(dev(dout), dev(ref_xhat), dev(gamma),
                                                 dev(inv_std), batch_statistics)
        want = reference.batchnorm_backward(dout, ref_xhat, gamma, inv_std, batch_statistics)
        scale = np.abs(want[0]).max() + 1.0
        np.testing.assert_allclose(np.asarray(dx), want[0], rtol=0,
                                   atol=TOL[dtype]["atol"] * scale)
        for g, r in ((dgamma, want[1]), (dbeta, want[2])):
            np.testing.assert_allclose(np.asarray(g), r, rtol=TOL[dtype]["rtol"] * 10,
                                       atol=TOL[dtype]["atol"] * n * h * w)
        for a in (y, xhat, dx):
            assert type(a) is cupy.ndarray and a.transpose(0, 2, 3, 1).flags.c_contiguous
        y_eval, none = k.batchnorm_normalize(dev(x), dev(ref_mean), dev(inv_std), dev(gamma),
                                             dev(beta), keep_xhat=False)
        assert none is None
        close(y_eval, ref_y, dtype)
    assert cupy.registry["ElementwiseKernel"] == 5        # normalize, normalize_eval,
                                                          # shifted, product, dx: once each
