"""Synchronised batch normalisation: the statistics of the global batch, over all ranks."""

from __future__ import annotations

import numpy as np

from minivgg import kernels
from minivgg.backend import get_array_module
from minivgg.layers.normalization import BatchNorm2D
from minivgg.modes import grad_enabled


def _per_channel_sum(a):
    """Sum over N, H and W of (N, C, H, W) -> (C,), accumulated in float64."""
    return a.sum(axis=(0, 2, 3), dtype=np.float64)


class SyncBatchNorm2D(BatchNorm2D):
    """Batch normalisation whose training statistics are those of the *global* batch.

    With data parallelism each of the R ranks holds a shard x_r of the batch. Plain
    BatchNorm2D normalises each shard with its own mean and variance (PyTorch's DDP does
    the same by default): the network then sees statistics of B/R images, not B. This
    layer takes them over the whole batch instead, so R ranks compute exactly what one
    process computes on the whole batch. With M = sum_r M_r values per channel (M_r =
    N_r * H * W on rank r), two sums are added over the ranks (``comm.allreduce``):

        mu   = (1/M) sum_r sum_{i in r} x_i                             first allreduce
        var  = (1/M) sum_r sum_{i in r} (x_i - mu)^2                    second allreduce
        xhat = (x - mu) / sqrt(var + eps),    y = gamma * xhat + beta   on each rank

    (centring before squaring -- two passes -- is the reference's formula, and stays
    accurate when the mean is large next to the spread). The running statistics move
    with mu and var * M / (M - 1), the same on every rank.

    Backward. The loss L depends on x_i through y_i and through mu and var, which every
    value of every rank influenced. With dout_j = dL/dy_j the gradient of the global loss
    (each rank holds its own rows), the single-process derivation (BatchNorm2D) goes
    through unchanged once its sums run over all M values of the channel:

        dbeta  = sum_all dout_j             dgamma = sum_all dout_j * xhat_j
        dx_i   = gamma / (M * sqrt(var + eps)) * (M * dout_i - dbeta - xhat_i * dgamma)

    because dxhat_j/dx_i = (1/sqrt(var + eps)) ([i = j] - 1/M - xhat_i xhat_j / M) holds
    for any i, j of the channel, on whichever ranks they are. So backward adds the two
    local sums over the ranks (a third allreduce, of 2C numbers) and then finishes
    locally. The parameter gradients keep the *local* parts of dbeta and dgamma: the
    training step's gradient allreduce adds them, as it adds every other parameter's.

    In evaluation mode the layer is BatchNorm2D (running statistics, no communication).
    ``comm`` is a minivgg.distributed communicator; with one rank the layer equals
    BatchNorm2D.
    """

    def __init__(self, num_features: int, comm, eps: float = 1e-5, momentum: float = 0.1,
                 dtype=np.float32):
        super().__init__(num_features, eps, momentum, dtype)
        self.comm = comm

    @classmethod
    def from_batch_norm(cls, bn: BatchNorm2D, comm) -> SyncBatchNorm2D:
        """A synchronised layer that takes over ``bn``'s parameters and running buffers
        (the same arrays and Parameter objects: an optimizer built for ``bn`` still
        updates them)."""
        layer = cls.__new__(cls)
        layer.__dict__.update(vars(bn))
        layer.comm, layer.cache = comm, None
        return layer

    def _allreduce(self, a):
        """Sum the float64 host-or-device vector ``a`` over the ranks, in place."""
        self.comm.allreduce(a)
        return a

    def forward(self, x, training=None):
        if not self._is_training(training):
            return super().forward(x, training)
        self._check_nchw(x)
        xp = get_array_module(x)
        c = self.num_features
        first = xp.zeros(c + 1, dtype=np.float64)          # (sum of x per channel, count)
        first[:c] = _per_channel_sum(x)
        first[c] = x.shape[0] * x.shape[2] * x.shape[3]
        self._allreduce(first)
        m = float(first[c])
        if m < 2:
            self._fail(f"training needs more than one value per channel over all ranks to "
                       f"estimate a variance, got input of shape {tuple(x.shape)}")
        mean = (first[:c] / m).astype(x.dtype)
        centred = x - mean.reshape(1, -1, 1, 1)
        var = self._allreduce(_per_channel_sum(centred * centred)) / m
        del centred
        mom = self.momentum
        self.running_mean[...] = (1 - mom) * self.running_mean + mom * mean
        self.running_var[...] = (1 - mom) * self.running_var + \
            mom * (var * (m / (m - 1))).astype(x.dtype)
        var = var.astype(x.dtype)
        inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype)
        y, xhat = kernels.batchnorm_normalize(x, mean, inv_std, self.gamma.data,
                                              self.beta.data, keep_xhat=grad_enabled())
        self._keep(("global", xhat, inv_std, m))
        return y

    def backward(self, dout):
        cache = self._cached(self.cache)
        if cache[0] != "global":                          # an evaluation-mode forward
            return super().backward(dout)
        _, xhat, inv_std, m = cache
        self._check_grad(dout, xhat.shape)
        self.cache = None
        xp = get_array_module(dout)
        c = self.num_features
        local = xp.empty(2 * c, dtype=np.float64)
        local[:c] = _per_channel_sum(dout)
        local[c:] = _per_channel_sum(dout * xhat)
        self.beta.grad[...] = local[:c]                   # this rank's parts; the step's
        self.gamma.grad[...] = local[c:]                  # gradient allreduce adds them
        total = self._allreduce(local.copy())
        dbeta, dgamma = total[:c].astype(dout.dtype), total[c:].astype(dout.dtype)

        def per_channel(v):
            return v.reshape(1, -1, 1, 1)
        scale = per_channel(self.gamma.data * inv_std / dout.dtype.type(m))
        return scale * (dout.dtype.type(m) * dout - per_channel(dbeta)
                        - xhat * per_channel(dgamma))

    def __repr__(self):
        return (f"SyncBatchNorm2D({self.num_features}, eps={self.eps}, momentum="
                f"{self.momentum}, ranks={self.comm.size})")


def convert_sync_batchnorm(model, comm) -> int:
    """Replace every BatchNorm2D of ``model`` (a Sequential) by a SyncBatchNorm2D over
    ``comm`` that keeps its parameters and buffers; the number replaced.

    The names in ``state_dict()`` do not change, so checkpoints are the same either way.
    """
    replaced = 0
    for parent in [model, *_containers(model)]:
        for i, layer in enumerate(parent.layers):
            if type(layer) is BatchNorm2D:
                parent.layers[i] = SyncBatchNorm2D.from_batch_norm(layer, comm)
                replaced += 1
    return replaced


def _containers(model):
    """Every Sequential nested inside ``model``, depth first."""
    from minivgg.models import Sequential
    for layer in model.layers:
        if isinstance(layer, Sequential):
            yield layer
            yield from _containers(layer)
