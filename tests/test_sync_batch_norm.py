"""SyncBatchNorm2D: R ranks (threads of one process) compute the batch norm of the whole
batch, forward and backward; its gradient passes centred finite differences across ranks.

Across real processes (mpirun -n 2) the same layer is tested in test_distributed_mpi.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import minivgg as mv
from minivgg import backend
from minivgg.distributed.comm import SingleProcess
from minivgg.distributed.simulate import SimulatedRanks
from minivgg.gradcheck import check_layer
from minivgg.layers import BatchNorm2D, SyncBatchNorm2D
from minivgg.layers.sync_batch_norm import convert_sync_batchnorm


@pytest.fixture(autouse=True)
def reference_kernels():
    """Threads share the process: the NumPy reference kernels (Numba's workqueue layer,
    minivgg's choice off Linux, must not be entered from two threads at once)."""
    saved = backend._cpu_kernels, backend._device
    mv.set_backend("numpy")
    yield
    backend._cpu_kernels, backend._device = saved


def _params(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.gamma.data[...] = rng.uniform(0.5, 1.5, layer.num_features)
    layer.beta.data[...] = rng.uniform(-0.5, 0.5, layer.num_features)
    return layer


def synced(ranks: int, c: int = 3):
    return SimulatedRanks(lambda comm: _params(SyncBatchNorm2D(c, comm, dtype=np.float64)),
                          ranks)


def per_rank(ranks: int, c: int = 3):
    return SimulatedRanks(lambda comm: _params(BatchNorm2D(c, dtype=np.float64)), ranks)


def batch(n=6, c=3, s=3, seed=1):
    rng = np.random.default_rng(seed)
    offsets = np.array([3.0, -1.0, 0.5])[:c].reshape(1, c, 1, 1)
    return rng.standard_normal((n, c, s, s)) * 2.0 + offsets


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_synchronised_statistics_equal_the_whole_batch(ranks):
    """7 images over 2, 3 or 4 ranks (unequal shards): forward, backward and running
    statistics equal one BatchNorm2D on all 7, to float64 rounding."""
    x = batch(n=7)
    dout = np.random.default_rng(2).standard_normal(x.shape)
    whole = _params(BatchNorm2D(3, dtype=np.float64))
    y_want, dx_want = whole.forward(x, training=True), whole.backward(dout)
    layer = synced(ranks)
    y, dx = layer.forward(x, training=True), layer.backward(dout)
    np.testing.assert_allclose(y, y_want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.gamma.grad, whole.gamma.grad, rtol=1e-12)
    np.testing.assert_allclose(layer.beta.grad, whole.beta.grad, rtol=1e-12)
    for replica in layer.replicas:                 # every rank moved its running stats alike
        np.testing.assert_allclose(replica.running_mean, whole.running_mean, rtol=1e-12)
        np.testing.assert_allclose(replica.running_var, whole.running_var, rtol=1e-12)


def test_per_rank_statistics_differ_from_the_whole_batch():
    """The default (each rank its own shard's statistics) is another function: the test
    above would fail for it."""
    x = batch(n=8)
    whole = _params(BatchNorm2D(3, dtype=np.float64))
    y_want = whole.forward(x, training=True)
    y = per_rank(2).forward(x, training=True)
    assert np.abs(y - y_want).max() > 1e-3


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("training", [True, False])
def test_gradient_check_across_ranks(ranks, training):
    """Centred differences of the global function, float64: relative error < 1e-7."""
    errors = check_layer(synced(ranks), batch(n=7), training=training, tol=1e-7)
    assert set(errors) == {"input", "gamma", "beta"}
    assert max(errors.values()) < 1e-7


def test_gradient_check_catches_a_backward_with_local_sums():
    """A planted bug -- backward finishing with the shard's own sums, as if the shard
    were the whole batch -- fails the check; so the check sees across ranks."""
    class LocalBackward(SyncBatchNorm2D):
        def _allreduce(self, a):
            if getattr(self, "_in_backward", False):
                return a                          # forget to add the other ranks' sums
            return super()._allreduce(a)

        def backward(self, dout):
            self._in_backward = True
            try:
                return super().backward(dout)
            finally:
                self._in_backward = False

    layer = SimulatedRanks(lambda c: _params(LocalBackward(3, c, dtype=np.float64)), 2)
    with pytest.raises(AssertionError, match="gradient check failed"):
        check_layer(layer, batch(n=6))


def test_one_rank_is_batch_norm():
    x = batch(n=5)
    a, b = _params(BatchNorm2D(3, dtype=np.float64)), \
        _params(SyncBatchNorm2D(3, SingleProcess(), dtype=np.float64))
    np.testing.assert_allclose(b.forward(x, True), a.forward(x, True), rtol=1e-12, atol=1e-14)
    dout = np.random.default_rng(3).standard_normal(x.shape)
    np.testing.assert_allclose(b.backward(dout), a.backward(dout), rtol=1e-12, atol=1e-14)


def test_conversion_keeps_parameters_names_and_optimizer():
    from minivgg.models import vgg
    from minivgg.optim import SGD
    model = vgg([4, "M", 8, "M"], 3, 32, head="cifar", batch_norm=True, seed=0)
    optimizer = SGD(model, 0.1)
    before = model.state_dict()
    params = model.named_parameters()
    assert convert_sync_batchnorm(model, SingleProcess()) == 2
    layers = [layer for _, layer in model.named_layers()]
    assert sum(isinstance(layer, SyncBatchNorm2D) for layer in layers) == 2
    assert model.named_parameters() == params              # the very same Parameter objects
    assert set(optimizer.params.values()) >= set(params.values())
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_wrong_channels_name_the_layer():
    layer = SyncBatchNorm2D(4, SingleProcess())
    with pytest.raises(ValueError, match="SyncBatchNorm2D: expected 4 channels"):
        layer.forward(np.zeros((2, 3, 2, 2), dtype=np.float32), training=True)
