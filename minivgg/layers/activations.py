"""Activation functions."""

from __future__ import annotations

from minivgg.backend import get_array_module
from minivgg.layers.base import Layer


class ReLU(Layer):
    """Rectified linear unit, elementwise on any shape.

        y  = max(x, 0)
        dx = dout * [x > 0]        (the derivative at exactly 0 is taken as 0)

    The cache is the boolean mask ``x > 0``: one byte per element instead of the input.
    """

    def __init__(self):
        self.cache = None

    def forward(self, x, training=True):
        xp = get_array_module(x)
        mask = x > 0
        if training:
            self.cache = mask
        return xp.where(mask, x, xp.zeros((), dtype=x.dtype))

    def backward(self, dout):
        mask = self._cached(self.cache)
        self.cache = None
        xp = get_array_module(dout)
        return xp.where(mask, dout, xp.zeros((), dtype=dout.dtype))
