"""Inverted dropout."""

from __future__ import annotations

import numpy as np

from minivgg.backend import get_array_module
from minivgg.keyed_random import KeyedRandom
from minivgg.layers.base import Layer


class Dropout(Layer):
    """Zero each activation with probability ``p`` during training; identity in evaluation.

        keep ~ Bernoulli(1 - p)        same shape as x
        y    = x * keep / (1 - p)      "inverted": the expected value of y equals x,
        dx   = dout * keep / (1 - p)   so nothing needs rescaling at evaluation time

    In evaluation mode (``eval()`` or ``training=False``) the layer is the identity, and so
    is its backward. ``freeze_mask()`` makes later forwards reuse the last mask, which a
    gradient check needs: the function being differentiated must not change between calls.

    The mask is drawn where x lives (NumPy or CuPy) by ``rng``, a counter-based
    ``minivgg.keyed_random.KeyedRandom``: the same bits on the CPU and the GPU, nothing
    copied from the host. ``rng`` may be given as a KeyedRandom, an int seed, or a NumPy
    Generator (seeded from its SeedSequence without drawing from it). The trainer moves it
    to (epoch, step) before each step, so a resumed run draws the same masks.
    """

    def __init__(self, p: float = 0.5, rng=None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        if isinstance(rng, np.random.Generator):
            rng = KeyedRandom.from_generator(rng)
        elif not isinstance(rng, KeyedRandom):
            rng = KeyedRandom(rng)
        self.rng = rng
        self.frozen = False
        self.mask = None      # keep / (1 - p), the scaled mask of the last training forward
        self.cache = None

    def freeze_mask(self, frozen: bool = True) -> None:
        self.frozen = frozen

    def forward(self, x, training=None):
        if not self._is_training(training) or self.p == 0.0:
            self._keep((None, x.shape))                          # identity: dx = dout
            return x
        if not (self.frozen and self.mask is not None and self.mask.shape == x.shape):
            keep = self.rng.keep_mask(x.shape, self.p, xp=get_array_module(x))
            self.mask = keep.astype(x.dtype) / x.dtype.type(1.0 - self.p)
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
