"""Inverted dropout."""

from __future__ import annotations

import numpy as np

from minivgg.backend import get_array_module
from minivgg.layers.base import Layer


class Dropout(Layer):
    """Zero each activation with probability ``p`` during training; identity in evaluation.

        keep ~ Bernoulli(1 - p)        same shape as x
        y    = x * keep / (1 - p)      "inverted": the expected value of y equals x,
        dx   = dout * keep / (1 - p)   so nothing needs rescaling at evaluation time

    In evaluation mode (``eval()`` or ``training=False``) the layer is the identity, and so
    is its backward. The mask is drawn from ``rng`` (a seeded ``numpy.random.Generator``
    gives the same masks every run). ``freeze_mask()`` makes later forwards reuse the last
    mask, which a gradient check needs: the function being differentiated must not change
    between calls.
    """

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        self.rng = np.random.default_rng() if rng is None else rng
        self.frozen = False
        self.mask = None      # keep / (1 - p), the scaled mask of the last training forward
        self.cache = None

    def freeze_mask(self, frozen: bool = True) -> None:
        self.frozen = frozen

    def forward(self, x, training=None):
        if not self._is_training(training) or self.p == 0.0:
            self._keep((None, x.shape))                          # identity: dx = dout
            return x
        xp = get_array_module(x)
        if not (self.frozen and self.mask is not None and self.mask.shape == x.shape):
            keep = self.rng.random(x.shape) >= self.p          # drawn on the host, seeded
            self.mask = xp.asarray(keep.astype(x.dtype) / x.dtype.type(1.0 - self.p))
        mask = self.mask.astype(x.dtype, copy=False)
        self._keep((mask, x.shape))
        return x * mask

    def backward(self, dout):
        mask, shape = self._cached(self.cache)
        self._check_grad(dout, shape)
        self.cache = None
        return dout if mask is None else dout * mask

    def __repr__(self):
        return f"Dropout(p={self.p})"
