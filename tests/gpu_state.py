"""Whether the gpu tests can run here, and what to do with them when they cannot.

Three states, decided once per session:

    "absent"   CuPy is not installed, or there is no NVIDIA device: gpu tests skip.
    "broken"   CuPy is installed and a device is present, but the probe reports a problem
               (a missing NVRTC, cuBLAS, headers, an old driver): every gpu test FAILS with
               the probe's message. A broken set-up must not pass as a row of skips.
    "ok"       the gpu tests run.
"""

from __future__ import annotations

import glob

import pytest


def device_present(cupy_count=None) -> bool:
    """An NVIDIA device is here: CuPy counts one, or the driver made a /dev/nvidiaN node."""
    if cupy_count is not None:
        try:
            if cupy_count() > 0:
                return True
        except Exception:
            pass
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def gpu_state(problem=None, present=None) -> tuple[str, str]:
    """``(state, message)``; ``problem`` and ``present`` are injectable for tests."""
    if problem is None:
        from minivgg.backend import cupy_problem
        problem = cupy_problem
    found = problem()
    if found is None:
        return "ok", ""
    reason, advice = found
    if reason == "not installed":
        return "absent", "needs CuPy and a CUDA device (CuPy is not installed)"
    if present is None:
        def present():
            try:
                import cupy
            except Exception:
                return device_present()
            return device_present(cupy.cuda.runtime.getDeviceCount)
    if not present():
        return "absent", f"needs CuPy and a CUDA device ({reason})"
    return "broken", (f"CuPy is installed and a CUDA device is present, but CuPy cannot run: "
                      f"{reason}: {advice}")


def check_item(item, state: tuple[str, str]) -> None:
    """At a gpu test's set-up: skip it where there is no GPU, fail it where CuPy is broken."""
    if "gpu" not in item.keywords:
        return
    kind, message = state
    if kind == "absent":
        pytest.skip(message)
    if kind == "broken":
        pytest.fail(message, pytrace=False)
