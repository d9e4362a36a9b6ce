"""Activation functions."""

from __future__ import annotations

from minivgg import kernels
from minivgg.layers.base import Layer


class ReLU(Layer):
    """Rectified linear unit, elementwise on any shape.

        y  = max(x, 0)
        dx = dout * [x > 0]        (the derivative at exactly 0 is taken as 0)

    The cache is the boolean mask ``x > 0``: one byte per element instead of the input, and
    its shape is the one backward accepts. The kernels (reference: ``np.where``) run over
    memory in order, so an NCHW view of NHWC data comes back as the same kind of view: no
    transpose is ever copied. ``training`` changes nothing: ReLU is the same in both modes.
    """

    def __init__(self):
        self.cache = None

    def forward(self, x, training=None):
        if not hasattr(x, "dtype") or x.dtype.kind != "f":
            got = f"dtype {x.dtype}" if hasattr(x, "dtype") else type(x).__name__
            self._fail(f"expected a floating-point array, got {got}", TypeError)
        y, mask = kernels.relu_forward(x)
        self._keep(mask)
        return y

    def backward(self, dout):
        mask = self._cached(self.cache)
        self._check_grad(dout, mask.shape)
        self.cache = None
        return kernels.relu_backward(dout, mask)
