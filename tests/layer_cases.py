"""The registry of layer cases: one entry per layer configuration worth checking.

Every test that should hold for *every* layer -- gradient checks in both modes, agreement
across backends, error messages, planted bugs -- is written once in test_layer_registry.py
and runs over ``CASES``. Adding a layer means adding one ``LayerCase`` here;
``test_every_layer_has_a_case`` fails until you do.

Inputs are chosen away from kinks on purpose: distinct values for max-pooling (no ties
within eps), values away from 0 for ReLU (finite differences never cross the kink).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from minivgg.layers import (
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    LocalResponseNorm,
    MaxPool2D,
    ReLU,
    SyncBatchNorm2D,
)


def distinct(rng, shape, spacing=0.1):
    """Values all different by at least ``spacing`` (>> eps): no max-pool ties, no kinks."""
    values = rng.permutation(int(np.prod(shape))) * spacing
    return (values - values.mean()).reshape(shape).astype(np.float64)


def away_from_zero(rng, shape, margin=0.05):
    """Random values with |x| > margin, so finite differences never cross ReLU's kink."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + margin, x - margin)


def normal(rng, shape):
    return rng.standard_normal(shape)


@dataclass(frozen=True)
class LayerCase:
    """One layer configuration: how to build it (float64) and an input that suits it.

    ``ndim`` is the input rank the layer insists on (None: any). ``modes`` are the
    ``training`` values whose behaviour differs and must each be gradient-checked.
    """

    id: str
    build: Callable[[np.random.Generator], object]
    shape: tuple
    values: Callable = normal
    ndim: int | None = 4
    modes: tuple = (True, False)
    tol: float = 1e-7
    devices: tuple = ("cpu", "gpu")

    def make(self, seed: int = 0):
        """(layer in float64, input in float64), the same for the same seed."""
        rng = np.random.default_rng(seed)
        layer = self.build(rng).astype(np.float64)
        return layer, self.values(rng, self.shape)


def _bn(rng):
    layer = BatchNorm2D(3)
    layer.gamma.data[...] = rng.uniform(0.5, 1.5, 3)           # non-trivial parameters
    layer.beta.data[...] = rng.uniform(-0.5, 0.5, 3)
    layer.running_mean[...] = rng.uniform(-0.2, 0.2, 3)        # and running statistics
    layer.running_var[...] = rng.uniform(0.5, 2.0, 3)
    return layer


def _sync_bn_one_rank(rng):
    """Synchronised batch norm over a group of one: it must behave as BatchNorm2D."""
    from minivgg.distributed.comm import SingleProcess
    return SyncBatchNorm2D.from_batch_norm(_bn(rng), SingleProcess())


def _frozen_dropout(rng):
    return Dropout(0.4, rng=np.random.default_rng(rng.integers(1 << 30)))


CASES = [
    LayerCase("conv3x3", lambda r: Conv2D(3, 4, 3, padding=1, rng=r), (2, 3, 5, 5)),
    LayerCase("conv3x3-s2", lambda r: Conv2D(3, 2, 3, stride=2, padding=1, rng=r), (2, 3, 7, 6)),
    LayerCase("conv1x1", lambda r: Conv2D(4, 3, 1, padding=0, rng=r), (1, 4, 5, 5)),
    LayerCase("conv5x5-same", lambda r: Conv2D(2, 2, 5, stride=2, padding="same", rng=r),
              (1, 2, 9, 7)),
    LayerCase("conv-nobias", lambda r: Conv2D(2, 3, 3, padding=1, bias=False, rng=r),
              (2, 2, 4, 4)),
    LayerCase("conv-winograd", lambda r: Conv2D(3, 4, 3, padding=1, rng=r,
                                                algorithm="winograd"), (2, 3, 6, 5),
              devices=("cpu",)),                   # Winograd runs on NumPy arrays only
    LayerCase("maxpool2", lambda r: MaxPool2D(2, 2), (2, 3, 4, 4), distinct),
    LayerCase("maxpool3-s2", lambda r: MaxPool2D(3, 2), (2, 2, 7, 7), distinct),
    LayerCase("relu", lambda r: ReLU(), (2, 3, 5, 5), away_from_zero, ndim=None),
    LayerCase("dense", lambda r: Dense(7, 3, rng=r), (4, 7), ndim=2),
    LayerCase("dropout", _frozen_dropout, (3, 6), ndim=None),
    LayerCase("flatten", lambda r: Flatten(), (2, 3, 2, 2), ndim=None),
    LayerCase("batchnorm", _bn, (4, 3, 3, 3)),
    LayerCase("sync-batchnorm", _sync_bn_one_rank, (4, 3, 3, 3)),
    LayerCase("lrn", lambda r: LocalResponseNorm(n=3, k=1.0, alpha=0.5, beta=0.75),
              (2, 5, 3, 3)),
    LayerCase("global-avg-pool", lambda r: GlobalAvgPool2D(), (2, 3, 4, 5)),
]
