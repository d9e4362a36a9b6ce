"""Where arrays live, and which CPU kernels run: two separate choices.

**The device comes from the array.** A layer asks its input which array module it belongs
to (``get_array_module(x)``: NumPy or CuPy) and computes with that; the kernels dispatch the
same way. A model whose parameters are CuPy arrays, fed CuPy arrays, runs on the GPU; the
same code on NumPy arrays runs on the CPU. ``minivgg.device.place(model, optimizer, device)``
moves a model (and its optimizer's state) between the two.

**The CPU kernels are a setting of their own**, because on the CPU there are two
implementations of every hot loop (im2col, col2im, pooling, ReLU):

    "numba"  compiled by Numba (minivgg/kernels/cpu.py): fast, the default
    "numpy"  the plain NumPy reference (minivgg/kernels/reference.py): slow but readable,
             the specification the lessons teach from and every other kernel is tested against

``set_cpu_kernels(name)`` chooses; CuPy arrays always go to the CUDA kernels (gpu.py).

``set_backend(name)`` is the one-word convenience over both choices that the command line
and ``MINIVGG_BACKEND`` use; ``default_device()`` is where ``to_device`` and the data
loaders put new arrays:

    set_backend("numpy")   CPU arrays, reference kernels
    set_backend("numba")   CPU arrays, Numba kernels
    set_backend("cupy")    GPU arrays (fails with the reason when CuPy cannot run here)
    set_backend("auto")    "cupy" where CuPy runs on a CUDA device, else "numba"

CuPy is imported lazily, so CPU users never pay for it. TF32 for float32 GEMMs on the GPU
is off unless ``set_tf32(True)`` (or ``tf32=True``) allows it.
"""

from __future__ import annotations

import os

import numpy as np

BACKENDS = ("auto", "numpy", "numba", "cupy")
CPU_KERNELS = ("numba", "numpy")
DEVICES = ("cpu", "gpu")

_cpu_kernels: str | None = None     # "numba" | "numpy"; from MINIVGG_BACKEND on first use
_device: str | None = None          # "cpu" | "gpu": where to_device puts new arrays
_tf32 = False


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why and what to do."""


def configure_numba_threads() -> None:
    """Pick Numba's threading layer deliberately: "workqueue" unless the user chose one.

    Numba's OpenMP threads spin after each parallel kernel and then compete with the
    GEMM threads for the cores; "workqueue" threads sleep. Must run before the first
    parallel kernel; minivgg.kernels.cpu calls it on import.
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
                "install the GPU extra, pip install -e '.[gpu]', or use set_backend('numba')")
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


def require_cupy(who: str = "set_backend('cupy')"):
    """Import CuPy, or raise BackendUnavailable saying why it cannot run here."""
    problem = cupy_problem()
    if problem is not None:
        reason, advice = problem
        raise BackendUnavailable(f"{who}: cannot use CuPy ({reason}): {advice}.")
    import cupy
    return cupy


# -- the two choices ---------------------------------------------------------------------
def set_cpu_kernels(name: str) -> str:
    """Choose the kernels that NumPy arrays run through: "numba" or "numpy" (the reference)."""
    global _cpu_kernels
    if not isinstance(name, str) or name.lower() not in CPU_KERNELS:
        raise ValueError(f"set_cpu_kernels: unknown kernels {name!r}; expected one of "
                         f"{CPU_KERNELS}")
    _cpu_kernels = name.lower()
    if _cpu_kernels == "numba":
        configure_numba_threads()
    return _cpu_kernels


def get_cpu_kernels() -> str:
    """"numba" or "numpy": the implementation NumPy arrays are computed with."""
    if _cpu_kernels is None:
        _initialise()
    return _cpu_kernels


def default_device() -> str:
    """"cpu" or "gpu": where ``to_device`` (and the data loaders) put new arrays."""
    if _device is None:
        _initialise()
    return _device


def _initialise() -> None:
    set_backend(os.environ.get("MINIVGG_BACKEND", "auto") or "auto")


def set_backend(name: str = "auto", *, tf32: bool | None = None) -> str:
    """Set both choices from one word; returns the resolved name ("numpy", "numba", "cupy").

    "numpy" and "numba" put new arrays on the CPU and pick the CPU kernels; "cupy" puts new
    arrays on the GPU (the CPU kernels stay as they were); "auto" is "cupy" where CuPy runs
    on a CUDA device, else "numba". ``tf32`` (GPU only) sets TF32 as ``set_tf32`` does.

    Raises BackendUnavailable when "cupy" is asked for and cannot run here; the message
    says why (not installed, no device, CUDA library mismatch) and what to do.
    """
    global _device
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"set_backend: unknown backend {name!r}; expected one of {BACKENDS}")
    name = name.lower()
    if name == "auto":
        name = "cupy" if cupy_problem() is None else "numba"
    if name == "cupy":
        require_cupy()
        _device = "gpu"
        if _cpu_kernels is None:
            set_cpu_kernels("numba")
    else:
        set_cpu_kernels(name)
        _device = "cpu"
    if tf32 is not None:
        set_tf32(tf32)
    return name


def get_backend() -> str:
    """The one-word summary of both choices: "cupy" when new arrays go to the GPU, else the
    CPU kernels' name ("numba" or "numpy")."""
    return "cupy" if default_device() == "gpu" else get_cpu_kernels()


# -- TF32 ---------------------------------------------------------------------------------
def set_tf32(enabled: bool) -> None:
    """Allow (True) or forbid (False, the default) TF32 for float32 GEMMs on the GPU.

    TF32 rounds GEMM inputs to a 10-bit mantissa on GPUs of compute capability 8.0 or newer:
    several times faster, results differ from float32 in the 4th significant digit. float64
    and the CPU are never affected. The GPU kernels read the setting at each GEMM.
    """
    global _tf32
    _tf32 = bool(enabled)


def get_tf32() -> bool:
    """Whether TF32 is allowed for float32 GEMMs on the GPU."""
    return _tf32


# -- arrays -------------------------------------------------------------------------------
def is_cupy_array(x) -> bool:
    """True for a CuPy array (checked without importing CuPy)."""
    return type(x).__module__.split(".", 1)[0] == "cupy"


def get_array_module(x=None):
    """The array module (numpy or cupy) of ``x``; without ``x``, the default device's."""
    if (x is not None and is_cupy_array(x)) or (x is None and default_device() == "gpu"):
        import cupy
        return cupy
    return np


def device_of(x) -> str:
    """"gpu" for a CuPy array, "cpu" for anything else."""
    return "gpu" if is_cupy_array(x) else "cpu"


def to_device(x, device: str | None = None):
    """``x`` on ``device`` ("cpu" or "gpu"; default: ``default_device()``), copied if needed."""
    device = default_device() if device is None else check_device(device, "to_device")
    if device == "gpu":
        return require_cupy("to_device('gpu')").asarray(x)
    return asnumpy(x)


def check_device(device, who: str) -> str:
    """Normalise a device name ("cpu"; "gpu", "cuda"); a clear error for anything else."""
    aliases = {"cpu": "cpu", "numpy": "cpu", "gpu": "gpu", "cuda": "gpu", "cupy": "gpu"}
    if not isinstance(device, str) or device.lower() not in aliases:
        raise ValueError(f"{who}: unknown device {device!r}; expected 'cpu' or 'gpu'")
    return aliases[device.lower()]


def asnumpy(x):
    """Return ``x`` as a NumPy array on the host (copies from the GPU when needed)."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)
