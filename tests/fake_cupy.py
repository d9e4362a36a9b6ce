"""A stand-in for CuPy made of NumPy, so that minivgg's GPU code paths run on the CPU.

minivgg dispatches on the array's type (``type(x).__module__`` starting with "cupy"), so a
NumPy subclass that says it comes from CuPy is sent down the GPU path, and ``import cupy``
finds this module. It has just what the array-expression parts of the GPU path use
(batch norm, channel sums, the probe, the TF32 switch): NumPy's functions returning the
subclass, an ``ElementwiseKernel`` that runs its C body as NumPy expressions (the bodies
are plain arithmetic), a ``RawModule`` that runs minivgg's ReLU kernel, and the GEMM
compute-type module, recording the compute type in force at each ``matmul``.

Nothing here is CUDA: what it shows is that the Python around the kernels is right (what
is launched, with which shapes, layouts and settings, and how often kernels are built).
The tests marked ``gpu`` run the same code on a real device.
"""

from __future__ import annotations

import sys
import types

import numpy as np


class ndarray(np.ndarray):            # noqa: N801 -- CuPy's name
    """NumPy memory that minivgg takes for a CuPy array."""

    def get(self):
        return np.array(self)


ndarray.__module__ = "cupy._core.core"


def _dev(a):
    return a.view(ndarray) if isinstance(a, np.ndarray) and type(a) is not ndarray else a


def _wrap(fn):
    return lambda *args, **kwargs: _dev(fn(*args, **kwargs))


class ElementwiseKernel:
    """Runs ``operation`` ("T v = x - s; y = v * v;") as NumPy expressions in type T."""

    def __init__(self, in_params, out_params, operation, name, registry):
        registry["ElementwiseKernel"] += 1
        self.inputs = [p.split()[-1] for p in in_params.split(",")]
        self.outputs = [p.split()[-1] for p in out_params.split(",")]
        self.body = [s.strip() for s in operation.split(";") if s.strip()]
        self.name = name

    def __call__(self, *args):
        ins = [np.asarray(a) for a in args[:len(self.inputs)]]
        outs = list(args[len(self.inputs):])
        dtype = ins[0].dtype
        if not outs:
            shape = np.broadcast_shapes(*(a.shape for a in ins))
            outs = [np.empty(shape, dtype).view(ndarray) for _ in self.outputs]
        values = dict(zip(self.inputs, ins))
        for statement in self.body:
            target, expression = statement.split("=", 1)
            values[target.split()[-1]] = np.asarray(eval(expression, {}, values), dtype)
        for name, out in zip(self.outputs, outs):
            out[...] = values[name]
        return outs[0] if len(outs) == 1 else tuple(outs)


class RawModule:
    """minivgg's CUDA module: only its ReLU kernels, run with NumPy."""

    def __init__(self, code, options=(), name_expressions=(), registry=None):
        registry["RawModule"] += 1
        self.registry = registry

    def get_function(self, name):
        self.registry["get_function"] += 1

        def launch(grid, block, args):
            self.registry["launches"] += 1
            if name.startswith("relu_forward_flat"):
                x, y, mask = (np.asarray(a) for a in args[:3])
                mask[...] = x > 0
                y[...] = np.where(x <= 0, 0, x)
            else:
                raise NotImplementedError(f"fake CuPy: kernel {name} is not emulated")
        return launch


def make(device_count=1, capability="80", compute_type=None):
    """A fake ``cupy`` module; ``compute_type`` is CuPy's float32 GEMM setting to start from."""
    cupy = types.ModuleType("cupy")
    registry = {"ElementwiseKernel": 0, "RawModule": 0, "get_function": 0, "launches": 0,
                "matmul_compute_types": [], "set_compute_type": 0}
    cupy.registry = registry
    cupy.ndarray = ndarray
    for name in ("empty", "empty_like", "zeros", "ones", "ascontiguousarray", "maximum",
                 "sqrt", "arange", "full", "pad", "where"):
        setattr(cupy, name, _wrap(getattr(np, name)))
    cupy.asarray = lambda a, dtype=None: _dev(np.array(a, dtype=dtype))
    cupy.asnumpy = lambda a: np.array(a)
    cupy.float32, cupy.float64, cupy.bool_ = np.float32, np.float64, np.bool_
    cupy.uint8, cupy.int64, cupy.uint64 = np.uint8, np.int64, np.uint64

    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_PEDANTIC, linalg.COMPUTE_TYPE_TF32 = 1, 2, 7
    state = {"float32": linalg.COMPUTE_TYPE_DEFAULT if compute_type is None else compute_type,
             "float64": linalg.COMPUTE_TYPE_DEFAULT}
    linalg.get_compute_type = lambda dtype: state[np.dtype(dtype).name]

    def set_compute_type(dtype, value):
        registry["set_compute_type"] += 1
        state[np.dtype(dtype).name] = value
    linalg.set_compute_type = set_compute_type
    cupy.compute_state = state

    def matmul(a, b, out=None):
        registry["matmul_compute_types"].append(state["float32"])
        return _dev(np.matmul(a, b, out=out))
    cupy.matmul = matmul
    cupy.ElementwiseKernel = lambda *a: ElementwiseKernel(*a, registry=registry)
    cupy.RawModule = lambda **k: RawModule(registry=registry, **k)
    cupy._core = types.ModuleType("cupy._core")
    cupy._core._routines_linalg = linalg
    device = types.SimpleNamespace(id=0, compute_capability=capability,
                                   mem_info=(20 << 30, 24 << 30))
    cupy.cuda = types.SimpleNamespace(
        Device=lambda *a: device,
        runtime=types.SimpleNamespace(getDeviceCount=lambda: device_count))
    cupy.lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(
        as_strided=_wrap(np.lib.stride_tricks.as_strided)))
    return cupy


def install(monkeypatch, **settings):
    """Put a fake CuPy in ``sys.modules`` for one test, with minivgg's caches emptied."""
    from minivgg.kernels import gpu, gpu_channels, probe
    cupy = make(**settings)
    for name, module in (("cupy", cupy), ("cupy._core", cupy._core),
                         ("cupy._core._routines_linalg", cupy._core._routines_linalg)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(gpu, "_compiled", {})
    monkeypatch.setattr(gpu, "_tf32_capable", {})
    monkeypatch.setattr(gpu_channels, "_elementwise", {})
    monkeypatch.setattr(gpu_channels, "_ones", {})
    monkeypatch.setattr(probe, "_working", [])
    return cupy
