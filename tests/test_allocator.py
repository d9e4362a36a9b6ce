"""keep_freed_memory: glibc keeps freed blocks, so arrays allocated again reuse their pages."""

import resource
import sys

import numpy as np
import pytest

from minivgg.kernels import allocator


def _faults_of_second_round(size_bytes: int) -> int:
    """Minor page faults while allocating, writing and freeing two arrays, the second time."""
    n = size_bytes // 4

    def one_round():
        a, b = np.empty(n, np.float32), np.empty(n, np.float32)
        a.fill(1.0)
        b.fill(2.0)
        return float(a[-1] + b[-1])

    one_round()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    one_round()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc's malloc only (Linux)")
def test_freed_arrays_are_reused_without_page_faults():
    assert allocator.keep_freed_memory() is True        # the Numba kernels set it on import
    pages = (8 << 20) // 4096
    # two live 8 MB arrays, freed and asked for again: without the thresholds glibc maps
    # them afresh (984 faults measured here, transparent huge pages taking some); with
    # them, the heap still holds their pages (0 faults)
    assert _faults_of_second_round(8 << 20) < pages // 4


def test_the_environment_variable_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv("MINIVGG_KEEP_MEMORY", "0")
    assert allocator.keep_freed_memory() is False


def test_not_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator._glibc() is None
    assert allocator.keep_freed_memory() is False
