"""Fully connected (dense) layer."""

from __future__ import annotations

import numpy as np

from minivgg import kernels
from minivgg.layers.base import Layer, Parameter, normal


class Dense(Layer):
    """An affine map of a batch of vectors.

    Shapes::

        x (N, D)   weight (D, M)   bias (M,)   ->   y (N, M)

        y      = x @ weight + bias
        dW     = x.T @ dout          (D, M)
        dbias  = dout.sum(axis=0)    (M,)
        dx     = dout @ weight.T     (N, D)

    Weights start from N(0, 0.01^2) and biases at zero (torchvision's VGG initialisation).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 rng: np.random.Generator | None = None, dtype=np.float32, std: float = 0.01):
        rng = np.random.default_rng() if rng is None else rng
        self.in_features, self.out_features = in_features, out_features
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Dense: {name} must be a positive integer, got {value!r}")
        self.weight = Parameter(normal((in_features, out_features), std, rng, dtype),
                                name="Dense.weight")
        self.bias = (Parameter(np.zeros(out_features, dtype=dtype), decay=False,
                               name="Dense.bias") if bias else None)
        self.cache = None

    def output_shape(self, input_shape):
        return (self.out_features,)

    def forward(self, x, training=None):
        self._check_input(x, 2, "(N, in_features)")
        if x.shape[1] != self.in_features:
            self._fail(f"expected {self.in_features} input features, got input of shape "
                       f"{tuple(x.shape)} with {x.shape[1]}")
        self._check_dtype(x, self.weight.data)
        y = kernels.matmul(x, self.weight.data,
                           bias=None if self.bias is None else self.bias.data)
        self._keep(x)
        return y

    def backward(self, dout):
        x = self._cached(self.cache)
        self._check_grad(dout, (x.shape[0], self.out_features))
        self.cache = None
        self.weight.grad[...] = kernels.matmul(x.T, dout)
        if self.bias is not None:
            self.bias.grad[...] = kernels.channel_sums(dout)
        return kernels.matmul(dout, self.weight.data.T)

    def __repr__(self):
        return f"Dense({self.in_features}, {self.out_features})"
