"""Max-pooling."""

from __future__ import annotations

import numpy as np

from minivgg import kernels
from minivgg.layers.base import Layer


def _positive_int(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"MaxPool2D: {name} must be a positive integer, got {value!r}")
    return int(value)


class MaxPool2D(Layer):
    """k x k max-pooling with stride s over each channel of an NCHW batch.

    Shapes::

        x  (N, C, H, W)   ->   y  (N, C, OH, OW),   OH = (H - k) // s + 1   (floor rule)

    Forward keeps, for each output, which entry of its window was the maximum (the
    ``argmax``, i * k + j). Backward sends each output gradient to that one entry; the
    others get zero. At a tie the first maximum (row-major) wins, as in PyTorch.
    ``training`` changes nothing here: pooling computes the same in both modes.
    """

    def __init__(self, kernel_size: int = 2, stride: int | None = None):
        self.kernel_size = _positive_int("kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else _positive_int("stride", stride)
        self.cache = None

    def output_shape(self, input_shape):
        """(C, H, W) -> (C, OH, OW), with the floor rule."""
        c, h, w = input_shape
        k, s = self.kernel_size, self.stride
        return (c, kernels.conv_output_size(h, k, s, 0), kernels.conv_output_size(w, k, s, 0))

    def forward(self, x, training=None):
        self._check_input(x, 4, "(N, C, H, W)")
        k = self.kernel_size
        if x.shape[2] < k or x.shape[3] < k:
            self._fail(f"window {k}x{k} is larger than the input {x.shape[2]}x{x.shape[3]} "
                       f"(input shape {tuple(x.shape)})")
        out, argmax = kernels.maxpool_forward(x, k, self.stride)
        self._keep((argmax, tuple(x.shape)))     # argmax has the output's shape
        return out

    def backward(self, dout):
        argmax, x_shape = self._cached(self.cache)
        self._check_grad(dout, argmax.shape)
        self.cache = None
        return kernels.maxpool_backward(dout, argmax, x_shape, self.kernel_size, self.stride)

    def __repr__(self):
        return f"MaxPool2D(kernel_size={self.kernel_size}, stride={self.stride})"
