"""Shared fixtures and marker handling for the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-subset"


def _cuda_works() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests cleanly where CuPy or a CUDA device is missing."""
    if any("gpu" in item.keywords for item in items) and not _cuda_works():
        skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def shared_cifar_dir():
    """The real CIFAR-10 subset beside the repository; skip where it is absent."""
    if not (SHARED_CIFAR / "cifar-10-batches-py").is_dir():
        pytest.skip(f"real CIFAR-10 subset not found at {SHARED_CIFAR}")
    return SHARED_CIFAR
