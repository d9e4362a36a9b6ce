"""Shared fixtures and marker handling for the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-subset"
_GPU = {}


def _gpu_state():
    """Decided once per session (the probe compiles a kernel): tests/gpu_state.py."""
    if "state" not in _GPU:
        from tests.gpu_state import gpu_state
        _GPU["state"] = gpu_state()
    return _GPU["state"]


def pytest_report_header(config):
    kind, message = _gpu_state()
    return f"minivgg gpu tests: {kind}" + (f" ({message})" if message else "")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """gpu tests skip where CuPy or a device is missing, and FAIL where CuPy is installed
    and a device is present but CuPy cannot run (a broken set-up is not a skip)."""
    if "gpu" in item.keywords:
        from tests.gpu_state import check_item
        check_item(item, _gpu_state())


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def shared_cifar_dir():
    """The real CIFAR-10 subset beside the repository; skip where it is absent."""
    if not (SHARED_CIFAR / "cifar-10-batches-py").is_dir():
        pytest.skip(f"real CIFAR-10 subset not found at {SHARED_CIFAR}")
    return SHARED_CIFAR
