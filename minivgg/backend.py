"""Which array library and which kernels are in use.

minivgg has one code path for its layers: a layer asks its input which array module it
belongs to (NumPy or CuPy) and uses that. What differs per backend is only *which kernel
implementation* runs for the hot loops (im2col, col2im, pooling):

    "numpy"  plain NumPy reference kernels (minivgg/kernels/reference.py), slow but readable
    "numba"  the same kernels compiled by Numba on the CPU (minivgg/kernels/cpu.py)
    "cupy"   CUDA kernels through CuPy on a GPU (minivgg/kernels/gpu.py)
    "auto"   CuPy if it imports and a CUDA device works, else Numba, else NumPy

Choose with ``set_backend(name)`` or the environment variable ``MINIVGG_BACKEND``.
CuPy is imported lazily, so CPU users never pay for it.
"""

from __future__ import annotations

import os

import numpy as np

BACKENDS = ("auto", "numpy", "numba", "cupy")

_backend: str | None = None  # resolved name, chosen on first use


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _cupy_problem() -> str | None:
    """Return None if CuPy can run here, else a sentence saying why not and what to do."""
    try:
        import cupy
    except ImportError:
        return ("CuPy is not installed. Install the GPU extra: pip install -e '.[gpu]' "
                "(or the cupy-cudaXXx wheel matching your CUDA driver).")
    except Exception as exc:  # a CUDA library mismatch often surfaces at import time
        return (f"CuPy is installed but failed to import ({exc}); this is usually a CUDA "
                "library mismatch: install the cupy-cudaXXx wheel that matches your driver.")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return (f"CuPy could not talk to a CUDA device ({exc}). Check the NVIDIA driver "
                "(nvidia-smi) and that the cupy-cudaXXx wheel matches its CUDA version.")
    if count == 0:
        return "CuPy is installed but no CUDA device was found. Use backend 'numba' instead."
    try:
        (cupy.arange(4, dtype=cupy.float32) * 2).sum().item()
    except Exception as exc:
        return (f"CuPy found a device but could not run a kernel on it ({exc}); this is "
                "usually a CUDA library mismatch between CuPy and the driver.")
    return None


def set_backend(name: str = "auto") -> str:
    """Select the backend; returns the resolved name ("numpy", "numba" or "cupy")."""
    global _backend
    name = name.lower()
    if name not in BACKENDS:
        raise ValueError(f"set_backend: unknown backend {name!r}; expected one of {BACKENDS}")
    if name == "auto":
        if _cupy_problem() is None:
            resolved = "cupy"
        elif _numba_available():
            resolved = "numba"
        else:
            resolved = "numpy"
    elif name == "cupy":
        problem = _cupy_problem()
        if problem is not None:
            raise RuntimeError(f"set_backend('cupy'): {problem}")
        resolved = "cupy"
    elif name == "numba":
        if not _numba_available():
            raise RuntimeError("set_backend('numba'): Numba is not installed (pip install numba).")
        resolved = "numba"
    else:
        resolved = "numpy"
    _backend = resolved
    return resolved


def get_backend() -> str:
    """The backend in use: "numpy", "numba" or "cupy"."""
    if _backend is None:
        set_backend(os.environ.get("MINIVGG_BACKEND", "auto"))
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
