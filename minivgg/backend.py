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
is off (exact float32) unless ``set_tf32(True)`` (or CUPY_TF32=1) allows it: the policy is
written out above ``set_tf32``.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

BACKENDS = ("auto", "numpy", "numba", "cupy")
CPU_KERNELS = ("numba", "numpy")
DEVICES = ("cpu", "gpu")

_cpu_kernels: str | None = None     # "numba" | "numpy"; from MINIVGG_BACKEND on first use
_device: str | None = None          # "cpu" | "gpu": where to_device puts new arrays
_tf32: bool | None = None          # the TF32 switch; None: the default (see set_tf32)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why and what to do."""


GOMP_SPINCOUNT = "1000"   # spins of an idle GNU OpenMP thread before it sleeps (~1-2 us)


def configure_numba_threads() -> None:
    """Pick Numba's threading layer deliberately, unless the user chose one: GNU OpenMP
    with idle threads that spin briefly (Linux), else "workqueue".

    A training step of the default network launches about a hundred parallel kernels,
    and each launch wakes the kernel's threads. "workqueue" threads sleep between kernels,
    and waking them took ~75 us per launch on the benchmark machine; OpenMP threads spin,
    and a launch took 1.5 us. But GNU OpenMP spins 300,000 times (milliseconds) before it
    sleeps, taking the cores from the GEMM threads that run between kernels (blas.py), so
    the spin count is cut to GOMP_SPINCOUNT: threads stay awake across the short gap
    between two kernels and no longer (default training step 48.8 -> 40.4 ms, VGG-11 at
    batch 64 171 -> 162 ms; spin counts of 300-5,000 measured alike, 100,000 slower than
    workqueue: benchmarks/results/amd-epyc-2core-2026-12-04-late-targets.md).

    The spin count is read once, when the OpenMP library loads (importing Numba's omppool
    loads it), so it is set only for that moment: a library that loads its own OpenMP
    afterwards (PyTorch) keeps its defaults. A GOMP_SPINCOUNT of the user's is kept. Must
    run before the first parallel kernel; minivgg.kernels.cpu calls it on import.
    """
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    import numba
    numba.config.THREADING_LAYER = "workqueue"
    if not sys.platform.startswith("linux"):
        return
    saved = os.environ.get("GOMP_SPINCOUNT")
    os.environ["GOMP_SPINCOUNT"] = saved or GOMP_SPINCOUNT
    try:
        from numba.np.ufunc import omppool
    except ImportError:          # no libgomp on this machine
        return
    finally:
        if saved is None:
            del os.environ["GOMP_SPINCOUNT"]
    if omppool.openmp_vendor == "GNU":
        numba.config.THREADING_LAYER = "omp"


def cupy_problem() -> tuple[str, str] | None:
    """None if CuPy can run here, else ``(reason, advice)``.

    The probe (minivgg/kernels/probe.py) imports CuPy, counts the devices, and runs a CuPy
    elementwise kernel, one of minivgg's own CUDA kernels and a float32 matmul, so each of
    the driver, NVRTC, the CUDA headers and cuBLAS is exercised. ``reason`` names what is
    missing: "not installed", "no NVIDIA driver", "driver too old", "no device",
    "NVRTC missing", "CUDA headers missing", "cuBLAS missing", "CUDA library missing",
    "wrong result" or "CUDA error"; ``advice`` says what failed and how to fix it.
    """
    from minivgg.kernels.probe import cupy_problem as probe
    return probe()


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
    on a CUDA device, else "numba" -- with a warning when CuPy is installed but broken (a
    missing library, a driver too old), so a GPU set-up that needs fixing is not silently
    replaced by the CPU.

    ``tf32`` is the GPU's TF32 switch (``set_tf32``), applied only when the result is
    "cupy": ``tf32=True`` with "numpy" or "numba" is an error (the CPU has no TF32, and the
    call must not change what the GPU does), and with "auto" on a CPU-only machine it does
    nothing. ``None`` leaves the switch as it is.

    Raises BackendUnavailable when "cupy" is asked for and cannot run here; the message
    says what is missing and how to fix it. A failed call changes nothing.
    """
    global _device
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"set_backend: unknown backend {name!r}; expected one of {BACKENDS}")
    _check_tf32_value("set_backend", tf32)
    name = name.lower()
    if name in CPU_KERNELS and tf32:
        raise ValueError(f"set_backend: tf32=True applies to the GPU only; {name!r} computes "
                         "on the CPU, where float32 is always exact (use 'cupy', or "
                         "set_tf32(True) on its own)")
    if name == "auto":
        problem = cupy_problem()
        name = "cupy" if problem is None else "numba"
        if problem is not None and problem[0] not in _cupy_absent():
            warnings.warn(f"set_backend('auto'): CuPy is installed but cannot run here "
                          f"({problem[0]}): {problem[1]}. Using the CPU ('numba').",
                          RuntimeWarning, stacklevel=2)
    if name == "cupy":
        require_cupy()
        _device = "gpu"
        if _cpu_kernels is None:
            set_cpu_kernels("numba")
        if tf32 is not None:
            set_tf32(tf32)
    else:
        set_cpu_kernels(name)
        _device = "cpu"
    return name


def _cupy_absent():
    from minivgg.kernels.probe import ABSENT
    return ABSENT


def get_backend() -> str:
    """The one-word summary of both choices: "cupy" when new arrays go to the GPU, else the
    CPU kernels' name ("numba" or "numpy")."""
    return "cupy" if default_device() == "gpu" else get_cpu_kernels()


# -- TF32 ---------------------------------------------------------------------------------
# The policy. float32 GEMMs on the GPU are exact float32 by default, as on the CPU. TF32
# (inputs rounded to a 10-bit mantissa on GPUs of compute capability >= 8.0: several times
# faster, results that differ from float32 in the 4th significant digit) is used only where
# it is allowed, by one process-wide switch:
#
#     set_tf32(True)    allow TF32 for minivgg's float32 GEMMs (convolutions, Dense layers)
#     set_tf32(False)   forbid it (exact float32)
#     set_tf32(None)    back to the default: off, unless the environment has CUPY_TF32=1
#                       (CuPy's own variable, read the way CuPy reads it: an integer > 0)
#
# The switch is read at each GEMM, and the CuPy setting it needs is set for that GEMM only
# and restored after (kernels/gpu.py), so nothing leaks into the user's other CuPy code,
# and a user's CUPY_TF32=1 is never overridden unless set_tf32(False) says so. float64,
# the CPU and the reductions (kernels.channel_sums) are never affected.
def _check_tf32_value(who, enabled) -> None:
    if enabled is not None and not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"{who}: tf32 must be True, False or None, got {enabled!r}")


def set_tf32(enabled: bool | None) -> None:
    """Allow (True) or forbid (False) TF32 for float32 GEMMs on the GPU; None: the default
    (off, unless CUPY_TF32=1). See the policy above."""
    global _tf32
    _check_tf32_value("set_tf32", enabled)
    _tf32 = None if enabled is None else bool(enabled)


def get_tf32() -> bool:
    """Whether TF32 is allowed for float32 GEMMs on the GPU now."""
    if _tf32 is not None:
        return _tf32
    try:
        return int(os.environ.get("CUPY_TF32", "0") or 0) > 0
    except ValueError:
        return False


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
