"""The CuPy probe (kernels/probe.py): every way a GPU set-up fails is named, with its fix.

Each failure is injected into a fake CuPy (tests/fake_cupy.py) at the stage where a real
one fails: the import, the device count, a CuPy elementwise kernel (NVRTC and the CUDA
headers), minivgg's own kernel (NVRTC through RawModule) and a float32 matmul (cuBLAS).
The messages are CuPy's and the CUDA runtime's own wording.
"""

from __future__ import annotations

import builtins
import sys
import warnings

import pytest

import minivgg as mv
from minivgg import backend
from minivgg.kernels import probe
from tests import fake_cupy

GPU_EXTRA = "pip install -e '.[gpu]'"


@pytest.fixture
def restore_backend():
    saved = backend._cpu_kernels, backend._device, backend._tf32
    yield
    backend._cpu_kernels, backend._device, backend._tf32 = saved


def fail(exc):
    def raiser(*args, **kwargs):
        raise exc
    return raiser


def _count_fails(cupy, exc):
    cupy.cuda.runtime.getDeviceCount = fail(exc)


def _elementwise_fails(cupy, exc):
    cupy.arange = fail(exc)


def _raw_module_fails(cupy, exc):
    cupy.RawModule = fail(exc)


def _matmul_fails(cupy, exc):
    cupy.matmul = fail(exc)


NVRTC = RuntimeError("CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: cannot "
                     "open shared object file: No such file or directory")
HEADERS = RuntimeError("CompileException: /tmp/cupy/carray.cuh(8): catastrophic error: "
                       "cannot open source file \"cuda_fp16.h\"")
CUBLAS = OSError("libcublas.so.12: cannot open shared object file: No such file or directory")
INSUFFICIENT = RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                            "insufficient for CUDA runtime version")


@pytest.mark.parametrize("inject, exc, driver, reason, advice", [
    (_count_fails, INSUFFICIENT, False, "no NVIDIA driver", "install the driver"),
    (_count_fails, INSUFFICIENT, True, "driver too old", "update the driver"),
    (_count_fails, RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"),
     True, "no device", "CUDA_VISIBLE_DEVICES"),
    (_elementwise_fails, NVRTC, True, "NVRTC missing", GPU_EXTRA),
    (_elementwise_fails, HEADERS, True, "CUDA headers missing", GPU_EXTRA),
    (_raw_module_fails, NVRTC, True, "NVRTC missing", "cupy-cuda12x[ctk]"),
    (_matmul_fails, CUBLAS, True, "cuBLAS missing", GPU_EXTRA),
    (_matmul_fails, RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED"), True, "cuBLAS missing",
     "cupy-cuda12x[ctk]"),
    (_matmul_fails, RuntimeError("cudaErrorIllegalAddress"), True, "CUDA error", GPU_EXTRA),
])
def test_each_failure_names_what_is_missing_and_the_fix(monkeypatch, restore_backend, inject,
                                                        exc, driver, reason, advice):
    cupy = fake_cupy.install(monkeypatch)
    monkeypatch.setattr(probe, "driver_loadable", lambda: driver)
    inject(cupy, exc)
    got = backend.cupy_problem()
    assert got is not None and got[0] == reason
    assert advice in got[1] and str(exc) in got[1]          # the fix, and what was seen
    with pytest.raises(backend.BackendUnavailable,
                       match=rf"set_backend\('cupy'\): cannot use CuPy \({reason}\)"):
        mv.set_backend("cupy")


def test_no_device_and_not_installed(monkeypatch, restore_backend):
    fake_cupy.install(monkeypatch, device_count=0)
    assert backend.cupy_problem()[0] == "no device"
    monkeypatch.setitem(sys.modules, "cupy", None)          # None makes `import cupy` fail
    reason, advice = backend.cupy_problem()
    assert reason == "not installed" and GPU_EXTRA in advice


def test_a_library_that_fails_to_load_at_import_is_named(monkeypatch, restore_backend):
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "cupy":
            raise ImportError("libcublas.so.12: cannot open shared object file")
        return real_import(name, *args, **kwargs)
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    reason, advice = backend.cupy_problem()
    assert reason == "cuBLAS missing" and GPU_EXTRA in advice


def test_a_wrong_answer_is_a_problem_too(monkeypatch, restore_backend):
    cupy = fake_cupy.install(monkeypatch)
    real = cupy.matmul
    cupy.matmul = lambda a, b, out=None: real(a, b, out=out) + 1
    assert backend.cupy_problem()[0] == "wrong result"


def test_a_working_cupy_passes_every_stage_once(monkeypatch, restore_backend):
    """All five stages run (minivgg's kernel compiled and launched, a GEMM), then the
    result is remembered: a second probe launches nothing."""
    cupy = fake_cupy.install(monkeypatch)
    assert backend.cupy_problem() is None
    assert cupy.registry["RawModule"] == 1 and cupy.registry["launches"] == 1
    assert len(cupy.registry["matmul_compute_types"]) == 1
    assert backend.cupy_problem() is None
    assert cupy.registry["launches"] == 1 and len(cupy.registry["matmul_compute_types"]) == 1
    assert mv.set_backend("auto") == "cupy"


def test_auto_warns_when_cupy_is_broken_and_not_when_absent(monkeypatch, restore_backend):
    cupy = fake_cupy.install(monkeypatch)
    _matmul_fails(cupy, CUBLAS)
    with pytest.warns(RuntimeWarning, match=r"CuPy is installed but cannot run here "
                                            r"\(cuBLAS missing\)"):
        assert mv.set_backend("auto") == "numba"
    fake_cupy.install(monkeypatch, device_count=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mv.set_backend("auto") == "numba"


def test_classify_reads_the_libraries_out_of_messages():
    assert probe.classify("nvrtc: error: invalid option") == "NVRTC missing"
    assert probe.classify("libcudart.so.12: cannot open shared object file") == \
        "CUDA library missing"
    assert probe.classify("libcuda.so.1: cannot open shared object file") == \
        "no NVIDIA driver"
    assert probe.classify("something else entirely") is None
