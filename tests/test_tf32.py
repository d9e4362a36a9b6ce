"""The TF32 policy (backend.py): exact float32 by default, one switch, no leaking state.

The state machine is checked on the CPU with a fake CuPy (tests/fake_cupy.py) that records
the GEMM compute type in force at each ``cupy.matmul`` and how often it is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import minivgg as mv
from minivgg import backend, kernels
from minivgg.kernels import gpu
from tests import fake_cupy

DEFAULT, TF32 = 1, 7            # the fake's compute types (CuPy's values differ; names match)


@pytest.fixture(autouse=True)
def restore_backend():
    saved = backend._cpu_kernels, backend._device, backend._tf32
    yield
    backend._cpu_kernels, backend._device, backend._tf32 = saved


def fresh_tf32(env):
    code = "from minivgg import backend; print(backend.get_tf32())"
    environment = {k: v for k, v in os.environ.items() if k != "CUPY_TF32"} | env
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=environment)
    return out.stdout.strip() or out.stderr


def test_default_is_exact_unless_cupy_tf32_is_set():
    assert fresh_tf32({}) == "False"
    assert fresh_tf32({"CUPY_TF32": "1"}) == "True"          # CuPy's own variable, as CuPy
    assert fresh_tf32({"CUPY_TF32": "0"}) == "False"         # reads it (an integer > 0)


def test_a_cpu_backend_never_turns_tf32_on(monkeypatch):
    backend.set_tf32(None)
    monkeypatch.delenv("CUPY_TF32", raising=False)
    before = mv.get_backend()
    with pytest.raises(ValueError, match="tf32=True applies to the GPU only"):
        mv.set_backend("numpy", tf32=True)
    assert backend.get_tf32() is False and mv.get_backend() == before   # nothing changed
    mv.set_backend("numba", tf32=False)                                 # harmless
    assert backend.get_tf32() is False
    with pytest.raises(TypeError, match="tf32 must be True, False or None"):
        backend.set_tf32("yes")


def test_auto_on_a_cpu_machine_ignores_tf32(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    backend.set_tf32(None)
    monkeypatch.delenv("CUPY_TF32", raising=False)
    assert mv.set_backend("auto", tf32=True) == "numba"
    assert backend.get_tf32() is False


def test_switch_on_the_gpu_and_back(monkeypatch):
    fake_cupy.install(monkeypatch)
    monkeypatch.delenv("CUPY_TF32", raising=False)
    backend.set_tf32(None)
    assert mv.set_backend("cupy", tf32=True) == "cupy" and backend.get_tf32() is True
    mv.set_backend("numpy")                      # switching device leaves the switch alone
    assert backend.get_tf32() is True
    backend.set_tf32(False)                      # and set_tf32(False) undoes it
    assert backend.get_tf32() is False
    mv.set_backend("cupy")
    assert backend.get_tf32() is False
    monkeypatch.setenv("CUPY_TF32", "1")
    backend.set_tf32(None)                       # back to the default, from the environment
    assert backend.get_tf32() is True


def test_gemms_follow_the_switch_and_leave_cupys_setting_as_found(monkeypatch):
    cupy = fake_cupy.install(monkeypatch)
    a, b = cupy.ones((2, 3), dtype=np.float32), cupy.ones((3, 4), dtype=np.float32)
    for allowed, expected in ((True, TF32), (False, DEFAULT), (True, TF32)):
        backend.set_tf32(allowed)
        kernels.matmul(a, b)
        assert cupy.registry["matmul_compute_types"][-1] == expected
        assert cupy.compute_state["float32"] == DEFAULT            # restored afterwards
    backend.set_tf32(True)
    kernels.matmul(a.astype(np.float64), b.astype(np.float64))    # float64: never touched
    assert cupy.registry["matmul_compute_types"][-1] == DEFAULT


def test_cupy_tf32_is_not_overridden_unless_asked(monkeypatch):
    """CUPY_TF32=1: CuPy's compute type is already TF32 and minivgg's default agrees, so
    nothing is set; set_tf32(False) makes minivgg's GEMMs exact, and only them."""
    cupy = fake_cupy.install(monkeypatch, compute_type=TF32)
    monkeypatch.setenv("CUPY_TF32", "1")
    backend.set_tf32(None)
    a, b = cupy.ones((2, 3), dtype=np.float32), cupy.ones((3, 4), dtype=np.float32)
    kernels.matmul(a, b)
    assert cupy.registry["set_compute_type"] == 0
    assert cupy.registry["matmul_compute_types"] == [TF32]
    backend.set_tf32(False)
    kernels.matmul(a, b)
    assert cupy.registry["matmul_compute_types"][-1] == DEFAULT
    assert cupy.compute_state["float32"] == TF32                   # the user's, restored


def test_tf32_needs_compute_capability_8(monkeypatch):
    cupy = fake_cupy.install(monkeypatch, capability="75")
    backend.set_tf32(True)
    kernels.matmul(cupy.ones((2, 2), dtype=np.float32), cupy.ones((2, 2), dtype=np.float32))
    assert cupy.registry["matmul_compute_types"][-1] == DEFAULT


def test_channel_sums_never_use_tf32(monkeypatch):
    """Sums by GEMV with a ones vector would round the data to 10 bits under TF32."""
    cupy = fake_cupy.install(monkeypatch)
    backend.set_tf32(True)
    a = cupy.asarray(np.random.default_rng(0).standard_normal((300, 5)).astype(np.float32))
    kernels.channel_sums(a)
    types = cupy.registry["matmul_compute_types"]
    assert len(types) >= 2 and set(types) == {DEFAULT}


def test_a_cupy_without_the_compute_type_module_warns_once_when_tf32_is_asked(monkeypatch):
    cupy = fake_cupy.install(monkeypatch)
    monkeypatch.delattr(cupy._core, "_routines_linalg")
    monkeypatch.delitem(sys.modules, "cupy._core._routines_linalg")
    monkeypatch.setattr(gpu, "_warned", set())
    backend.set_tf32(True)
    a = cupy.ones((2, 2), dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="no GEMM compute-type setting"):
        kernels.matmul(a, a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.matmul(a, a)                     # once only
