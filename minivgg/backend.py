"""Which array library and which kernels are in use.

minivgg has one code path for its layers: a layer asks its input which array module it
belongs to (NumPy or CuPy) and uses that. What differs per backend is only *which kernel
implementation* runs for the hot loops (im2col, col2im, pooling, ReLU):

    "numpy"  plain NumPy reference kernels (minivgg/kernels/reference.py), slow but readable
    "numba"  the same kernels compiled by Numba on the CPU (minivgg/kernels/cpu.py)
    "cupy"   CUDA kernels through CuPy on a GPU (minivgg/kernels/gpu.py)
    "auto"   CuPy if it imports and a CUDA device works, else Numba, else NumPy

Choose with ``set_backend(name)`` or the environment variable ``MINIVGG_BACKEND`` (read on
first use). CuPy is imported lazily, so CPU users never pay for it.

Two switches that change speed, never the meaning of the code:

- ``set_backend("cupy", tf32=True)`` or ``set_tf32(True)`` lets cuBLAS round float32 GEMM
  inputs to TensorFloat-32 (10-bit mantissa) on Ampere or newer GPUs: several times faster,
  but results differ from float32 in the 4th significant digit. Off by default.
- Numba's threading layer is set to "workqueue" unless ``NUMBA_THREADING_LAYER`` is set:
  Numba's OpenMP threads spin after each kernel and fight OpenBLAS's GEMM threads for the
  cores (measured on 2 cores: 1.06x -> 1.22x over NumPy; notes/cpu-performance.md).
"""

from __future__ import annotations

import os

import numpy as np

BACKENDS = ("auto", "numpy", "numba", "cupy")

_backend: str | None = None  # resolved name, chosen on first use
_tf32 = False


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why and what to do."""


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def configure_numba_threads() -> None:
    """Pick Numba's threading layer deliberately: "workqueue" unless the user chose one.

    Must run before the first parallel kernel; minivgg.kernels.cpu calls it on import.
    """
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    import numba
    numba.config.THREADING_LAYER = "workqueue"


def cupy_problem() -> tuple[str, str] | None:
    """None if CuPy can run here, else (reason, advice).

    ``reason`` is one of "not installed", "no device", "CUDA library mismatch".
    """
    try:
        import cupy
    except ImportError:
        return ("not installed",
                "install the GPU extra, pip install -e '.[gpu]' (or the cupy-cudaXXx wheel "
                "matching your CUDA driver), or use set_backend('numba')")
    except Exception as exc:  # e.g. libcudart/libnvrtc of the wrong version
        return ("CUDA library mismatch",
                f"CuPy is installed but failed to import ({exc}); install the cupy-cudaXXx "
                "wheel that matches the CUDA version nvidia-smi reports, or use 'numba'")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        text = str(exc)
        if "insufficient" in text.lower() or "version" in text.lower():
            return ("CUDA library mismatch",
                    f"the NVIDIA driver is older than CuPy's CUDA runtime ({text}); update the "
                    "driver or install the cupy-cudaXXx wheel for the driver's CUDA version")
        return ("no device",
                f"CuPy could not find a usable CUDA device ({text}); check nvidia-smi and "
                "CUDA_VISIBLE_DEVICES, or use set_backend('numba')")
    if count == 0:
        return ("no device", "CuPy found no CUDA device; use set_backend('numba') on this "
                "machine, or check nvidia-smi and CUDA_VISIBLE_DEVICES")
    try:
        (cupy.arange(4, dtype=cupy.float32) * 2).sum().item()
    except Exception as exc:
        return ("CUDA library mismatch",
                f"CuPy found a device but could not compile or run a kernel on it ({exc}); "
                "install the cupy-cudaXXx wheel matching the driver's CUDA version")
    return None


def _cupy_error(problem: tuple[str, str]) -> BackendUnavailable:
    reason, advice = problem
    return BackendUnavailable(f"set_backend('cupy'): cannot use CuPy ({reason}): {advice}.")


def set_tf32(enabled: bool) -> None:
    """Allow (True) or forbid (False, the default) TF32 for float32 GEMMs on the GPU.

    Takes effect for CuPy's matmul on GPUs of compute capability 8.0 or newer; float64 and
    the CPU backends are never affected. The setting is remembered and applied whenever the
    "cupy" backend is selected.
    """
    global _tf32
    _tf32 = bool(enabled)
    if _backend == "cupy":
        _apply_tf32()


def get_tf32() -> bool:
    """Whether TF32 is allowed for float32 GEMMs on the GPU."""
    return _tf32


def _apply_tf32() -> None:
    from cupy._core import _routines_linalg as linalg  # CuPy's switch for cuBLAS compute type
    default = getattr(linalg, "COMPUTE_TYPE_DEFAULT", 1)
    tf32 = getattr(linalg, "COMPUTE_TYPE_TF32", 7)
    linalg.set_compute_type(np.float32, tf32 if _tf32 else default)


def set_backend(name: str = "auto", *, tf32: bool | None = None) -> str:
    """Select the backend; returns the resolved name ("numpy", "numba" or "cupy").

    ``tf32`` (GPU only) sets TF32 for float32 GEMMs as ``set_tf32`` does; None keeps the
    current setting (off unless changed).

    Raises BackendUnavailable when "cupy" or "numba" is asked for and cannot run here; the
    message says why (not installed, no device, CUDA library mismatch) and what to do.
    """
    global _backend
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"set_backend: unknown backend {name!r}; expected one of {BACKENDS}")
    name = name.lower()
    if tf32 is not None:
        set_tf32(tf32)
    if name == "auto":
        if cupy_problem() is None:
            resolved = "cupy"
        elif _numba_available():
            resolved = "numba"
        else:
            resolved = "numpy"
    elif name == "cupy":
        problem = cupy_problem()
        if problem is not None:
            raise _cupy_error(problem)
        resolved = "cupy"
    elif name == "numba":
        if not _numba_available():
            raise BackendUnavailable("set_backend('numba'): Numba is not installed; "
                                     "pip install numba, or use set_backend('numpy')")
        resolved = "numba"
    else:
        resolved = "numpy"
    if resolved == "numba":
        configure_numba_threads()
    _backend = resolved
    if resolved == "cupy":
        _apply_tf32()
    return resolved


def get_backend() -> str:
    """The backend in use: "numpy", "numba" or "cupy" (MINIVGG_BACKEND or "auto" at first)."""
    if _backend is None:
        set_backend(os.environ.get("MINIVGG_BACKEND", "auto") or "auto")
    return _backend


def get_array_module(x=None):
    """The array module (numpy or cupy) of ``x``; without ``x``, the active backend's."""
    if x is not None:
        if type(x).__module__.startswith("cupy"):
            import cupy
            return cupy
        return np
    if get_backend() == "cupy":
        import cupy
        return cupy
    return np


def to_device(x):
    """Move a host array to the active backend's device (a no-op on the CPU backends)."""
    if get_backend() == "cupy":
        import cupy
        return cupy.asarray(x)
    return asnumpy(x)


def asnumpy(x):
    """Return ``x`` as a NumPy array on the host (copies from the GPU when needed)."""
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)
