"""Flatten: from feature maps to vectors."""

from __future__ import annotations

import math

from minivgg.layers.base import Layer


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W) in C-order, so it matches PyTorch's ``flatten(1)``.

    Backward only reshapes the gradient back to the input's shape.
    """

    def __init__(self):
        self.cache = None

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x, training=None):
        if x.ndim < 2:
            self._fail(f"expected at least a 2-D input (N, ...), got shape {tuple(x.shape)}")
        self._keep(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        shape = self._cached(self.cache)
        self._check_grad(dout, (shape[0], math.prod(shape[1:])))
        self.cache = None
        return dout.reshape(shape)
