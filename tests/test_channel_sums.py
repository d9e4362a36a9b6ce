"""kernels.channel_sums: column sums for bias gradients and batch norm, on every backend.

The GPU's two-stage product with a ones vector (kernels/gpu_channels.py) is written
against any array module, so its arithmetic is checked here with NumPy; the whole GPU
entry (caching, exact compute type) with a fake CuPy; the real thing on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels import KERNEL_BACKENDS, kernel_module

from minivgg import backend, kernels
from minivgg.kernels import gpu_channels


@pytest.fixture(autouse=True)
def _restore_backend():
    saved = backend._cpu_kernels, backend._device, backend._tf32
    yield
    backend._cpu_kernels, backend._device, backend._tf32 = saved


def bound(a, terms):
    """|error| of a float sum whose every value passes through ``terms`` additions."""
    return terms * np.finfo(a.dtype).eps * np.abs(a.astype(np.float64)).sum(axis=0)


@pytest.mark.parametrize("m", [1, 2, 3, 5, 17, 99, 100, 101, 4099])
@pytest.mark.parametrize("c", [1, 3, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_stage_sums_equal_the_column_sums(m, c, dtype):
    a = np.random.default_rng(m * c).standard_normal((m, c)).astype(dtype)
    rows = gpu_channels.block_rows(m)
    ones = np.ones(max(rows, m // rows + 1), dtype=dtype)
    out = np.full(c, np.nan, dtype=dtype)
    assert gpu_channels.two_stage_sums(np, a, ones, out) is out
    truth = a.astype(np.float64).sum(axis=0)
    terms = rows + m // rows + 1                   # a block, the partials, the tail
    assert np.all(np.abs(out - truth) <= bound(a, terms))


def test_two_stage_sums_round_less_than_one_long_sum():
    """2 sqrt(M) additions per value instead of M: on a long float32 column of equal values
    the sequential sum drifts, the two-stage one stays close."""
    m = 1 << 20
    a = np.full((m, 1), 0.1, dtype=np.float32)
    ones = np.ones(2048, dtype=np.float32)
    two_stage = gpu_channels.two_stage_sums(np, a, ones, np.empty(1, np.float32))[0]
    sequential = np.cumsum(a[:, 0], dtype=np.float32)[-1]
    truth = m * float(np.float32(0.1))
    assert abs(two_stage - truth) < abs(sequential - truth) / 100


@pytest.mark.parametrize("name", ["numpy", *KERNEL_BACKENDS])
def test_channel_sums_on_every_backend(name, rng):
    if name == "numpy":
        backend.set_cpu_kernels("numpy")
        mod, to_dev, to_host = kernels, np.asarray, np.asarray
    else:
        mod, to_dev, to_host = kernel_module(name)
    for shape in ((7, 3), (4096, 64), (1, 5)):
        a = rng.standard_normal(shape).astype(np.float32)
        got = to_host(mod.channel_sums(to_dev(a)))
        assert got.shape == (shape[1],) and got.dtype == np.float32
        assert np.all(np.abs(got - a.astype(np.float64).sum(axis=0)) <= bound(a, 2 * 65 + 1))
    nhwc = np.ascontiguousarray(rng.standard_normal((2, 4, 4, 8)))     # a conv's dY rows
    out = to_dev(np.empty(8))
    assert mod.channel_sums(to_dev(nhwc).reshape(-1, 8), out=out) is out
    np.testing.assert_allclose(to_host(out), nhwc.reshape(-1, 8).sum(axis=0), rtol=1e-12)


def test_channel_sums_refuse_bad_arguments_naming_themselves():
    with pytest.raises(ValueError, match="channel_sums: a must be 2-D"):
        kernels.channel_sums(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"channel_sums: out must be a C-contiguous float64 cpu "
                                         r"array of shape \(3,\)"):
        kernels.channel_sums(np.ones((2, 3)), out=np.empty(4))


def test_gpu_entry_on_a_fake_cupy_caches_its_ones(monkeypatch):
    from tests import fake_cupy
    cupy = fake_cupy.install(monkeypatch)
    a = cupy.asarray(np.arange(12.0).reshape(6, 2))
    np.testing.assert_array_equal(np.asarray(kernels.channel_sums(a)), [30.0, 36.0])
    ones = next(iter(gpu_channels._ones.values()))
    kernels.channel_sums(cupy.asarray(np.ones((500, 2))))
    assert next(iter(gpu_channels._ones.values())) is ones        # no new vector per call


@pytest.mark.gpu
def test_gpu_channel_sums_are_exact_float32_under_tf32():
    """Values 1 + k * 2**-20 need 20 mantissa bits: TF32 (10 bits) would lose them all."""
    mod, to_dev, to_host = kernel_module("cupy")
    a = (1 + np.arange(4096 * 4).reshape(4096, 4) % 7 * 2.0 ** -20).astype(np.float32)
    backend.set_tf32(True)
    got = to_host(mod.channel_sums(to_dev(a)))
    assert np.all(np.abs(got - a.astype(np.float64).sum(axis=0)) <= bound(a, 2 * 65))
