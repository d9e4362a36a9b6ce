"""The CUDA kernels, checked on any machine: compiled with nvcc where present, and their
index arithmetic run on the CPU by compiling the same source with g++ (one "thread" looping
over all outputs), so the GPU kernels are compared with the reference even without a GPU.
The GPU GEMM's TF32 handling is checked against a stand-in for CuPy. On a machine with a
GPU, tests/test_kernels.py runs every kernel on CuPy arrays as well.
"""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import given

import minivgg as mv
from minivgg import backend
from minivgg.kernels import gpu, reference
from minivgg.kernels.reference import conv_output_size
from tests.test_kernels import SETTINGS, assert_same, conv_cases, pool_cases


def test_gpu_module_imports_without_cupy():
    """And minivgg.kernels with it: dispatch compares modules, so it imports gpu.py."""
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


X86 = platform.machine().lower() in ("x86_64", "amd64")
# The x86 FTZ (bit 15) and DAZ (bit 6) modes of MXCSR: subnormal results written as zero,
# subnormal operands read as zero, by every SSE arithmetic instruction and comparison.
X86_MODES = """
#include <xmmintrin.h>
extern "C" unsigned mv_set_ftz(int on) {
    unsigned old = _mm_getcsr();
    _mm_setcsr(on ? (old | 0x8040u) : (old & ~0x8040u));
    return old;
}
extern "C" void mv_restore_csr(unsigned value) { _mm_setcsr(value); }
"""
EMULATION = """
#include <cstddef>
struct MvDim { unsigned x; };
static const MvDim blockIdx = {0}, threadIdx = {0}, blockDim = {1}, gridDim = {1};
#define __global__
#define __device__
"""


@pytest.fixture(scope="module")
def cuda_on_cpu(tmp_path_factory):
    """The CUDA kernels compiled as plain C++: one thread whose grid-stride loop does it all."""
    if shutil.which("g++") is None or shutil.which("nm") is None:
        pytest.skip("needs g++ and nm")
    d = tmp_path_factory.mktemp("cuda_on_cpu")
    refs = ", ".join(f"(void*)&{k}<{t}>" for k in gpu.KERNEL_NAMES for t in ("float", "double"))
    source = EMULATION + gpu.CUDA_SOURCE + f"\nvoid* inst[] = {{{refs}}};\n"
    (d / "k.cpp").write_text(source + (X86_MODES if X86 else ""))
    subprocess.run(["g++", "-O1", "-std=c++14", "-shared", "-fPIC", "-ffp-contract=off",
                    str(d / "k.cpp"), "-o", str(d / "k.so")], check=True)
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(d / "k.so")],
                             capture_output=True, text=True, check=True).stdout.split()
    lib = ctypes.CDLL(str(d / "k.so"))

    def call(name, dtype, arrays, total, ints, ftz=False):
        """Run kernel ``name``; ``ftz``: in the x86 flush-to-zero and denormals-are-zero
        modes, which apply to float32 what CuPy's -ftz=true applies on the GPU."""
        tag = {np.float32: "If", np.float64: "Id"}[np.dtype(dtype).type]
        symbol = next(s for s in symbols if f"{len(name)}{name}{tag}" in s)
        args = [a.ctypes.data_as(ctypes.c_void_p) for a in arrays]
        kernel = getattr(lib, symbol)
        if not ftz:
            return kernel(*args, ctypes.c_longlong(total), *map(ctypes.c_int, ints))
        if not X86:
            pytest.skip("the flush-to-zero emulation needs x86 (MXCSR)")
        lib.mv_restore_csr.argtypes = [ctypes.c_uint]
        old = lib.mv_set_ftz(1)
        try:
            kernel(*args, ctypes.c_longlong(total), *map(ctypes.c_int, ints))
        finally:
            lib.mv_restore_csr(old)
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


# -- TF32 on the GPU, checked against a stand-in for CuPy ------------------------------------

def fake_cupy(monkeypatch, capability):
    """A CuPy whose matmul records the float32 compute type in force at each call."""
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_PEDANTIC, linalg.COMPUTE_TYPE_TF32 = 1, 2, 7
    types_now = {"float32": 2, "float64": 1}             # the user's own setting: PEDANTIC
    linalg.get_compute_type = lambda dtype: types_now[np.dtype(dtype).name]
    linalg.set_compute_type = lambda dtype, t: types_now.__setitem__(np.dtype(dtype).name, t)
    seen = []

    def matmul(a, b, out=None):
        seen.append(types_now[a.dtype.name])
        return np.matmul(a, b, out=out)
    cupy = types.ModuleType("cupy")
    cupy._core = types.ModuleType("cupy._core")
    cupy._core._routines_linalg = linalg
    cupy.matmul = matmul
    device = types.SimpleNamespace(id=0, compute_capability=capability)
    cupy.cuda = types.SimpleNamespace(Device=lambda: device)
    for name, module in (("cupy", cupy), ("cupy._core", cupy._core),
                         ("cupy._core._routines_linalg", linalg)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(gpu, "_tf32_capable", {})
    return types_now, seen


@pytest.mark.parametrize("capability,tf32_type", [("80", 7), ("75", 1)])
def test_gpu_matmul_reads_tf32_at_each_gemm_and_restores_cupys_setting(
        monkeypatch, capability, tf32_type):
    """set_tf32 decides each float32 GEMM (TF32 only from compute capability 8.0); the
    compute type CuPy had before is back afterwards; float64 GEMMs are left alone."""
    saved = backend._tf32
    types_now, seen = fake_cupy(monkeypatch, capability)
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    try:
        for allowed, expected in ((True, tf32_type), (False, 1), (True, tf32_type)):
            mv.set_tf32(allowed)
            out = np.empty((2, 4), np.float32)
            assert gpu.matmul(a, b, out) is out
            assert seen[-1] == expected and types_now["float32"] == 2
        gpu.matmul(a.astype(np.float64), b.astype(np.float64), np.empty((2, 4)))
        assert seen[-1] == 1 and types_now == {"float32": 2, "float64": 1}
    finally:
        backend._tf32 = saved


# -- subnormals: the CUDA source under flush-to-zero (what CuPy's -ftz=true does) -----------

def run_all_on_cpu(call, x, dcols, dout_pool, k, s, p, ftz_mode):
    """Every kernel of CUDA_SOURCE on x (NCHW), in or out of FTZ mode; NCHW results."""
    n, c, h, w = x.shape
    dt = x.dtype
    oh, ow = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    got = {}
    cols = np.empty((n * oh * ow, c * k * k), dtype=dt)
    call("im2col_nhwc", dt, (xh, cols), cols.size, (h, w, c, oh, ow, k, k, s, p), ftz_mode)
    got["im2col"] = cols
    dx = np.empty((n, h, w, c), dtype=dt)
    call("col2im_nhwc", dt, (dcols, dx), dx.size, (h, w, c, oh, ow, k, k, s, p), ftz_mode)
    got["col2im"] = dx.transpose(0, 3, 1, 2)
    po, pw = conv_output_size(h, 2, 1, 0), conv_output_size(w, 2, 1, 0)   # 2x2, stride 1
    out, arg = np.empty((n, po, pw, c), dt), np.empty((n, po, pw, c), np.uint8)
    call("maxpool_forward_nhwc", dt, (xh, out, arg), out.size, (h, w, c, po, pw, 2, 1), ftz_mode)
    got["maxpool_forward"] = (out.transpose(0, 3, 1, 2), arg.transpose(0, 3, 1, 2))
    dxp = np.empty((n, h, w, c), dtype=dt)
    call("maxpool_backward_nhwc", dt, (np.ascontiguousarray(dout_pool.transpose(0, 2, 3, 1)),
                                       arg, dxp), dxp.size, (h, w, c, po, pw, 2, 1), ftz_mode)
    got["maxpool_backward"] = dxp.transpose(0, 3, 1, 2)
    flat = x.reshape(-1).copy()
    y, mask = np.empty_like(flat), np.empty(flat.shape, dtype=np.bool_)
    call("relu_forward_flat", dt, (flat, y, mask), flat.size, (), ftz_mode)
    got["relu_forward"] = (y, mask)
    return got


def expectations(x, dcols, dout_pool, k, s, p, expect):
    """The same kernels by ``expect(kernel, *args)``: the reference or tests/ftz.py's."""
    _, argmax = expect("maxpool_forward", x, 2, 1)
    return {"im2col": expect("im2col", x, k, k, s, p),
            "col2im": expect("col2im", dcols, x.shape, k, k, s, p),
            "maxpool_forward": expect("maxpool_forward", x, 2, 1),
            "maxpool_backward": expect("maxpool_backward", dout_pool, argmax, x.shape, 2, 1),
            "relu_forward": expect("relu_forward", x.reshape(-1))}


def compare(got, want, check):
    for kernel, value in want.items():
        for a, e in zip(*((got[kernel], value) if isinstance(value, tuple)
                          else ((got[kernel],), (value,)))):
            try:
                check(a, e)
            except AssertionError as exc:
                raise AssertionError(f"{kernel}: {exc}") from None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, s, p", [(3, 1, 1), (2, 1, 0), (3, 2, 1)])
def test_subnormal_inputs_in_and_out_of_flush_to_zero(cuda_on_cpu, dtype, k, s, p):
    """Without FTZ the kernels give the reference's bits, subnormals included. With FTZ
    (x86 FTZ+DAZ, applied as the GPU's -ftz=true applies) float32 gives tests/ftz.py's
    expectation -- and no longer the reference's, so the FTZ-aware comparison is needed
    and can fail; float64 is untouched."""
    from minivgg.kernels import reference as ref
    from tests import ftz
    rng = np.random.default_rng(7)
    n, c, h, w = 2, 3, 6, 5
    oh, ow = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
    x = ftz.edge_values(rng, (n, c, h, w), dtype)
    dcols = ftz.edge_values(rng, (n * oh * ow, c * k * k), dtype)
    dout_pool = ftz.edge_values(rng, (n, c, h - 1, w - 1), dtype)
    args = (x, dcols, dout_pool, k, s, p)

    def plain(kernel, *a):
        return getattr(ref, kernel)(*a)
    compare(run_all_on_cpu(cuda_on_cpu, *args, ftz_mode=False), expectations(*args, plain),
            ftz.same_bits)
    flushed = run_all_on_cpu(cuda_on_cpu, *args, ftz_mode=True)
    compare(flushed, expectations(*args, ftz.expected), ftz.same_bits)
    if dtype == np.float32:
        differences = []

        def note(a, e):
            try:
                ftz.same_bits(a, e)
            except AssertionError:
                differences.append(True)
        compare(flushed, expectations(*args, plain), note)
        assert differences, "FTZ changed nothing: the subnormal test data are not subnormal"


def test_kernel_objects_are_built_once_not_per_launch(monkeypatch):
    """One RawModule per process, one lookup per kernel and dtype, however many launches
    (the elementwise kernels of batch norm: tests/test_kernels_batch_norm.py)."""
    from tests import fake_cupy
    cupy = fake_cupy.install(monkeypatch)
    for dtype in (np.float32, np.float32, np.float64, np.float64, np.float32):
        x = cupy.asarray(np.array([-1.0, 2.0], dtype))
        y, mask = cupy.empty_like(x), cupy.empty(2, dtype=np.bool_)
        gpu.relu_forward_flat(x, y, mask)
        np.testing.assert_array_equal(np.asarray(y), [0.0, 2.0])
    assert cupy.registry["RawModule"] == 1
    assert cupy.registry["get_function"] == 2 and cupy.registry["launches"] == 5
