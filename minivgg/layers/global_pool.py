"""Global average pooling: one number per channel (Lin et al., 2014, "Network in Network").

A head for small images that needs no large Dense layer: a CIFAR VGG's last feature map
(N, 512, 1, 1) or (N, 512, 2, 2) becomes (N, 512) without a parameter.
"""

from __future__ import annotations

from minivgg.backend import get_array_module
from minivgg.layers.base import Layer


class GlobalAvgPool2D(Layer):
    """The mean of each channel over all positions of an NCHW batch.

    Shapes::

        x  (N, C, H, W)   ->   y  (N, C)

        y[n, c]        = (1 / (H*W)) * sum_{i, j} x[n, c, i, j]
        dx[n, c, i, j] = dout[n, c] / (H*W)      every position shares the gradient equally

    The cache is only the input's shape: the backward needs no values.
    """

    def __init__(self):
        self.cache = None

    def output_shape(self, input_shape):
        return (input_shape[0],)

    def forward(self, x, training=None):
        self._check_input(x, 4, "(N, C, H, W)")
        self._keep(x.shape)
        return x.mean(axis=(2, 3))

    def backward(self, dout):
        n, c, h, w = self._cached(self.cache)
        self._check_grad(dout, (n, c))
        self.cache = None
        xp = get_array_module(dout)
        dx = xp.empty((n, c, h, w), dtype=dout.dtype)
        dx[...] = (dout / dout.dtype.type(h * w))[:, :, None, None]
        return dx
