"""Can CuPy run here? The probe behind ``backend.cupy_problem()``, one stage per dependency.

CuPy needs more than its wheel: the NVIDIA driver (from the operating system), a device,
and three parts of the CUDA Toolkit that ``cupy-cuda12x`` itself does not ship -- NVRTC
(CuPy compiles every kernel at run time), the CUDA headers (CuPy's own elementwise kernels
include them) and cuBLAS (every GEMM). ``pip install -e ".[gpu]"`` installs
``cupy-cuda12x[ctk]``, whose extra depends on
``cuda-toolkit[cublas,cudart,cufft,curand,cusolver,cusparse,nvrtc]==12.*`` (the metadata of
cupy-cuda12x 14.2.0): NVRTC, cuBLAS and the CUDA runtime with its headers as NVIDIA's
wheels, so on a machine with only the driver the GPU extra is enough. A missing piece shows
up only when something first needs it, so the probe exercises each one, in order:

    1. import cupy                     not installed; a CUDA library that cannot be loaded
    2. the device count                no NVIDIA driver; driver too old; no device
    3. a CuPy elementwise kernel       NVRTC missing; CUDA headers missing
    4. one of minivgg's own kernels    (NVRTC again, through RawModule: gpu.CUDA_SOURCE)
    5. a float32 matmul                cuBLAS missing

and names what is missing with the fix for it. A stage that runs but computes a wrong
answer is reported too ("wrong result"). Success is remembered per CuPy module, so the
probe (a compile and a GEMM) runs once per process.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np

EXTRA = "pip install -e '.[gpu]' (cupy-cuda12x[ctk]: NVRTC, cuBLAS and the CUDA headers as wheels)"
TOOLKIT = "or install the CUDA Toolkit 12.x and point CUDA_PATH at it"
ADVICE = {
    "not installed": f"install the GPU extra, {EXTRA}, or use set_backend('numba')",
    "no NVIDIA driver": "the NVIDIA driver is not installed (libcuda.so.1 cannot be loaded); "
                        "install the driver for this GPU (nvidia-smi must then list it), or use "
                        "set_backend('numba'); pip cannot install a driver",
    "driver too old": "the NVIDIA driver is older than the CUDA 12 runtime of cupy-cuda12x; "
                      "update the driver (release 525 or newer; nvidia-smi shows the CUDA "
                      "version it supports), or use set_backend('numba')",
    "no device": "CuPy found no usable CUDA device; check nvidia-smi and CUDA_VISIBLE_DEVICES, "
                 "or use set_backend('numba')",
    "NVRTC missing": f"CuPy compiles its kernels with NVRTC (libnvrtc), which is not installed: "
                     f"{EXTRA}, {TOOLKIT}",
    "CUDA headers missing": f"CuPy's kernels include the CUDA headers (cuda_fp16.h, ...), which "
                            f"are not installed: {EXTRA}, {TOOLKIT}",
    "cuBLAS missing": f"matrix products need cuBLAS (libcublas), which is not installed: "
                      f"{EXTRA}, {TOOLKIT}",
    "CUDA library missing": f"a CUDA library that CuPy loads is missing: {EXTRA}, {TOOLKIT}",
    "wrong result": "a GPU computation gave a wrong answer; run CuPy's own tests "
                    "(python -c 'import cupy; cupy.show_config()') or use set_backend('numba')",
    "CUDA error": f"reinstall the GPU extra, {EXTRA}, or use set_backend('numba')",
}
# Reasons where CuPy is not meant to run here (nothing installed, no GPU): "auto" falls back
# to the CPU without a word. Any other reason is a broken GPU set-up, and "auto" warns.
ABSENT = ("not installed", "no NVIDIA driver", "no device")

_working = []           # the CuPy module that passed the probe (at most one)


def driver_loadable() -> bool:
    """Whether the NVIDIA driver's user-space library (libcuda) can be loaded."""
    names = {"win32": ("nvcuda.dll",)}.get(sys.platform, ("libcuda.so.1", "libcuda.so"))
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def classify(text: str) -> str | None:
    """The missing piece that an error message names, or None."""
    t = text.lower()
    if "nvrtc" in t:
        return "NVRTC missing"
    if "cublas" in t:
        return "cuBLAS missing"
    if ("cannot open source file" in t or "catastrophic error" in t or ".h:" in t
            or "include file" in t or ".h\"" in t or ".h'" in t):
        return "CUDA headers missing"
    if "libcuda.so" in t or "nvcuda.dll" in t:
        return "no NVIDIA driver"
    if "insufficient" in t and "driver" in t:
        return "no NVIDIA driver" if not driver_loadable() else "driver too old"
    if "no cuda-capable device" in t or "nodevice" in t or "no device" in t:
        return "no device"
    if ".so" in t or ".dll" in t or "shared object" in t:
        return "CUDA library missing"
    return None


def _problem(reason: str, stage: str, exc=None) -> tuple[str, str]:
    detail = f"{stage}: {type(exc).__name__}: {exc}; " if exc is not None else f"{stage}; "
    return reason, detail + ADVICE[reason]


def _stage(stage: str, run, fallback: str = "CUDA error"):
    """Run one stage: None if it passed, else (reason, advice) from what it raised."""
    try:
        ok = run()
    except Exception as exc:     # CUDARuntimeError, CompileException, OSError, ImportError...
        return _problem(classify(str(exc)) or fallback, stage, exc)
    return None if ok else _problem("wrong result", stage + " gave a wrong result")


def _elementwise(cupy) -> bool:
    return float((cupy.arange(4, dtype=cupy.float32) * 2).sum().item()) == 12.0


def _project_kernel(cupy) -> bool:
    from minivgg.kernels import gpu
    x = cupy.asarray(np.array([-1.0, 0.0, 2.0, 1e-3], dtype=np.float32))
    y, mask = cupy.empty_like(x), cupy.empty(x.shape, dtype=cupy.bool_)
    gpu.relu_forward_flat(x, y, mask)
    return (cupy.asnumpy(y).tolist() == [0.0, 0.0, 2.0, np.float32(1e-3)]
            and cupy.asnumpy(mask).tolist() == [False, False, True, True])


def _matmul(cupy) -> bool:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)          # small integers: exact in
    b = np.arange(12, dtype=np.float32).reshape(3, 4)         # float32 and in TF32 alike
    product = cupy.matmul(cupy.asarray(a), cupy.asarray(b))
    return bool(np.array_equal(cupy.asnumpy(product), a @ b))


def cupy_problem() -> tuple[str, str] | None:
    """None if CuPy runs here (all five stages pass), else ``(reason, advice)``."""
    try:
        import cupy
    except ImportError as exc:
        if getattr(exc, "name", None) == "cupy" or "No module named 'cupy'" in str(exc):
            return _problem("not installed", "no module named cupy")
        return _problem(classify(str(exc)) or "CUDA library missing", "import cupy", exc)
    except Exception as exc:     # OSError: libcudart/libnvrtc/libcublas that cannot be loaded
        return _problem(classify(str(exc)) or "CUDA library missing", "import cupy", exc)
    if _working and _working[0] is cupy:
        return None

    def count():
        n = cupy.cuda.runtime.getDeviceCount()
        if n == 0:
            raise RuntimeError("no device: getDeviceCount() returned 0")
        return True
    stages = [("the CUDA driver and device count", count, "no device"),
              ("a CuPy elementwise kernel", lambda: _elementwise(cupy), "CUDA error"),
              ("minivgg's ReLU kernel (gpu.CUDA_SOURCE)", lambda: _project_kernel(cupy),
               "CUDA error"),
              ("a float32 matmul (cuBLAS)", lambda: _matmul(cupy), "CUDA error")]
    for stage, run, fallback in stages:
        problem = _stage(stage, run, fallback)
        if problem is not None:
            return problem
    _working[:] = [cupy]
    return None
