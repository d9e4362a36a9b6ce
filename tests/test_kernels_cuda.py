"""The CUDA kernels, checked on any machine: compiled with nvcc where present, and their
index arithmetic run on the CPU by compiling the same source with g++ (one "thread" looping
over all outputs), so the GPU kernels are compared with the reference even without a GPU.
The GPU GEMM's TF32 handling is checked against a stand-in for CuPy. On a machine with a
GPU, tests/test_kernels.py runs every kernel on CuPy arrays as well.
"""

from __future__ import annotations

import ctypes
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
