"""Max-pooling."""

from __future__ import annotations

from minivgg import kernels
from minivgg.layers.base import Layer


class MaxPool2D(Layer):
    """k x k max-pooling with stride s over each channel of an NCHW batch.

    Shapes::

        x  (N, C, H, W)   ->   y  (N, C, OH, OW),   OH = (H - k) // s + 1   (floor rule)

    Forward keeps, for each output, which entry of its window was the maximum (the
    ``argmax``, i * k + j). Backward sends each output gradient to that one entry; the
    others get zero. At a tie the first maximum (row-major) wins, as in PyTorch.
    """

    def __init__(self, kernel_size: int = 2, stride: int | None = None):
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        if self.kernel_size < 1 or self.stride < 1:
            raise ValueError(f"MaxPool2D: kernel_size and stride must be >= 1, "
                             f"got {kernel_size} and {stride}")
        self.cache = None

    def output_shape(self, input_shape):
        c, h, w = input_shape
        k, s = self.kernel_size, self.stride
        return (c, kernels.conv_output_size(h, k, s, 0), kernels.conv_output_size(w, k, s, 0))

    def forward(self, x, training=True):
        self._check_input(x, 4, "(N, C, H, W)")
        k = self.kernel_size
        if x.shape[2] < k or x.shape[3] < k:
            self._fail(f"window {k}x{k} is larger than the input {x.shape[2]}x{x.shape[3]} "
                       f"(input shape {tuple(x.shape)})")
        out, argmax = kernels.maxpool_forward(x, k, self.stride)
        if training:
            self.cache = (argmax, x.shape)
        return out

    def backward(self, dout):
        argmax, x_shape = self._cached(self.cache)
        self.cache = None
        return kernels.maxpool_backward(dout, argmax, x_shape, self.kernel_size, self.stride)

    def __repr__(self):
        return f"MaxPool2D(kernel_size={self.kernel_size}, stride={self.stride})"
