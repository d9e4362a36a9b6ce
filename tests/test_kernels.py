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

Shapes, strides, paddings, dtypes and memory layouts are drawn by hypothesis.
The CUDA source is compiled with nvcc where present, and its index arithmetic is run on the
CPU by compiling the same source with g++ (one "thread" looping over all outputs), so the GPU
kernels are checked against the reference even on a machine without a GPU.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minivgg.backend import cupy_problem
from minivgg.kernels import blas, gpu, reference
from minivgg.kernels.reference import conv_output_size

KERNEL_BACKENDS = [pytest.param("numba", id="numba"),
                   pytest.param("cupy", id="cupy", marks=pytest.mark.gpu)]
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def kernel_module(name):
    if name == "numba":
        pytest.importorskip("numba")
        from minivgg.kernels import cpu
        return cpu, np.asarray, np.asarray
    if cupy_problem() is not None:
        pytest.skip("needs CuPy and a CUDA device")
    import cupy
    return gpu, cupy.asarray, cupy.asnumpy


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
    return dict(n=draw(st.integers(1, 3)), c=draw(st.integers(1, 5)), h=h, w=w, k=k, s=s, p=p,
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
    out = to_dev(np.full((m, n), np.nan, dtype=dtype))
    assert mod.matmul(to_dev(a), to_dev(b), out=out) is out
    assert np.all(np.abs(to_host(out) - expected) <= bound)
    if threads is not None:
        assert blas._openblas()[0]() == threads                 # BLAS threads restored


def test_numba_keeps_nhwc_memory_nhwc(rng):
    """A conv output (NCHW view of NHWC) stays NHWC through pooling and ReLU: no copies."""
    pytest.importorskip("numba")
    from minivgg.kernels import cpu
    x = np.ascontiguousarray(rng.standard_normal((2, 4, 4, 3))).transpose(0, 3, 1, 2)
    y, _ = cpu.relu_forward(x)
    out, _ = cpu.maxpool_forward(y, 2, 2)
    for a in (y, out):
        assert a.transpose(0, 2, 3, 1).flags.c_contiguous


# -- the CUDA source, checked without a GPU ---------------------------------------------------

def test_gpu_module_imports_without_cupy():
    code = "import sys, minivgg.kernels.gpu, minivgg.kernels; assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_source_compiles_with_nvcc(tmp_path):
    refs = ", ".join(f"(void*)&{k}<{t}>" for k in gpu.KERNEL_NAMES for t in ("float", "double"))
    src = tmp_path / "kernels.cu"
    src.write_text(gpu.CUDA_SOURCE + f"\nvoid* instantiate[] = {{{refs}}};\n")
    result = subprocess.run(["nvcc", "-std=c++14", "-arch=sm_80", "-ptx", str(src),
                             "-o", str(tmp_path / "kernels.ptx")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ptx = (tmp_path / "kernels.ptx").read_text()
    assert ptx.count(".entry") == 2 * len(gpu.KERNEL_NAMES)


EMULATION = """
#include <cstddef>
struct MvDim { unsigned x; };
static const MvDim blockIdx = {0}, threadIdx = {0}, blockDim = {1}, gridDim = {1};
#define __global__
"""


@pytest.fixture(scope="module")
def cuda_on_cpu(tmp_path_factory):
    """The CUDA kernels compiled as plain C++: one thread whose grid-stride loop does it all."""
    if shutil.which("g++") is None or shutil.which("nm") is None:
        pytest.skip("needs g++ and nm")
    d = tmp_path_factory.mktemp("cuda_on_cpu")
    refs = ", ".join(f"(void*)&{k}<{t}>" for k in gpu.KERNEL_NAMES for t in ("float", "double"))
    (d / "k.cpp").write_text(EMULATION + gpu.CUDA_SOURCE + f"\nvoid* inst[] = {{{refs}}};\n")
    subprocess.run(["g++", "-O1", "-std=c++14", "-shared", "-fPIC", "-ffp-contract=off",
                    str(d / "k.cpp"), "-o", str(d / "k.so")], check=True)
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(d / "k.so")],
                             capture_output=True, text=True, check=True).stdout.split()
    lib = ctypes.CDLL(str(d / "k.so"))

    def call(name, dtype, arrays, total, ints):
        tag = {np.float32: "If", np.float64: "Id"}[np.dtype(dtype).type]
        symbol = next(s for s in symbols if f"{len(name)}{name}{tag}" in s)
        args = [a.ctypes.data_as(ctypes.c_void_p) for a in arrays]
        getattr(lib, symbol)(*args, ctypes.c_longlong(total), *map(ctypes.c_int, ints))
    return call


@SETTINGS
@given(case=conv_cases())
def test_cuda_im2col_col2im_index_math_on_cpu(cuda_on_cpu, case):
    n, c, h, w, k, s, p = (case[key] for key in "n c h w k s p".split())
    dt = case["dtype"]
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((n, c, h, w)).astype(dt)
    oh, ow = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
    cols = np.empty((n * oh * ow, c * k * k), dtype=dt)
    ints = (h, w, c, oh, ow, k, k, s, p)
    cuda_on_cpu("im2col_nhwc", dt, (np.ascontiguousarray(x.transpose(0, 2, 3, 1)), cols),
                cols.size, ints)
    assert_same(cols, reference.im2col(x, k, k, s, p))
    dcols = rng.standard_normal(cols.shape).astype(dt)
    dx = np.empty((n, h, w, c), dtype=dt)
    cuda_on_cpu("col2im_nhwc", dt, (dcols, dx), dx.size, ints)
    assert_same(dx.transpose(0, 3, 1, 2), reference.col2im(dcols, x.shape, k, k, s, p))


@SETTINGS
@given(case=pool_cases())
def test_cuda_maxpool_and_relu_index_math_on_cpu(cuda_on_cpu, case):
    n, c, h, w, k, s = (case[key] for key in "n c h w k s".split())
    dt = case["dtype"]
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((n, c, h, w))
    x = (np.round(x) if case["ties"] else x).astype(dt)
    oh, ow = conv_output_size(h, k, s, 0), conv_output_size(w, k, s, 0)
    out = np.empty((n, oh, ow, c), dtype=dt)
    argmax = np.empty((n, oh, ow, c), dtype=np.uint8)
    ints = (h, w, c, oh, ow, k, s)
    cuda_on_cpu("maxpool_forward_nhwc", dt,
                (np.ascontiguousarray(x.transpose(0, 2, 3, 1)), out, argmax), out.size, ints)
    ref_out, ref_arg = reference.maxpool_forward(x, k, s)
    assert_same(out.transpose(0, 3, 1, 2), ref_out)
    np.testing.assert_array_equal(argmax.transpose(0, 3, 1, 2), ref_arg)
    dout = rng.standard_normal(out.shape).astype(dt)
    dx = np.empty((n, h, w, c), dtype=dt)
    cuda_on_cpu("maxpool_backward_nhwc", dt, (dout, argmax, dx), dx.size, ints)
    assert_same(dx.transpose(0, 3, 1, 2),
                reference.maxpool_backward(dout.transpose(0, 3, 1, 2), ref_arg, x.shape, k, s))
    flat = x.reshape(-1).copy()
    flat[0] = np.nan                                              # ReLU lets NaN through
    y, mask = np.empty_like(flat), np.empty(flat.shape, dtype=np.bool_)
    cuda_on_cpu("relu_forward_flat", dt, (flat, y, mask), flat.size, ())
    ref_y, ref_mask = reference.relu_forward(flat)
    assert_same(y, ref_y)
    assert_same(mask, ref_mask)
    d = np.empty_like(flat)
    cuda_on_cpu("relu_backward_flat", dt, (flat, mask, d), flat.size, ())
    assert_same(d, reference.relu_backward(flat, ref_mask))
