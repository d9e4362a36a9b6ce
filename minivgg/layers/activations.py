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

    ``inplace=True`` writes y over x, as torchvision's VGG does (``nn.ReLU(inplace=True)``):
    one activation fewer in memory per ReLU. Right wherever nothing reads x afterwards --
    in a VGG the layer before a ReLU (a convolution, batch norm, a Dense layer) keeps for
    its backward its columns or tiles, xhat or its input, never its output. The models
    (minivgg.models.vgg) build their ReLUs in place; ``ReLU()`` alone leaves x as it was.
    """

    def __init__(self, inplace: bool = False):
        self.inplace = bool(inplace)
        self.cache = None

    def forward(self, x, training=None):
        if not hasattr(x, "dtype") or x.dtype.kind != "f":
            got = f"dtype {x.dtype}" if hasattr(x, "dtype") else type(x).__name__
            self._fail(f"expected a floating-point array, got {got}", TypeError)
        y, mask = kernels.relu_forward(x, inplace=self.inplace)
        self._keep(mask)
        return y

    def backward(self, dout):
        mask = self._cached(self.cache)
        self._check_grad(dout, mask.shape)
        self.cache = None
        return kernels.relu_backward(dout, mask)

    def __repr__(self):
        return "ReLU(inplace=True)" if self.inplace else "ReLU()"
