"""Parameter and Layer: the two small pieces every layer is built from.

A layer is an object with ``forward(x, training)`` and ``backward(dout) -> dx``.
``forward`` keeps exactly what ``backward`` needs (the *cache*); ``backward`` fills the
``.grad`` of every parameter and returns the gradient of the layer's input. There is no
autograd and no graph: a model calls ``backward`` of its layers in reverse order.
"""

from __future__ import annotations

import numpy as np

from minivgg.backend import asnumpy, get_array_module


class Parameter:
    """A trainable array and its gradient (same shape, same array module, same dtype).

    ``decay`` says whether weight decay applies (biases and batch-norm scales usually not).
    """

    def __init__(self, data, decay: bool = True):
        self.data = data
        self.grad = get_array_module(data).zeros_like(data)
        self.decay = decay

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Layer:
    """Base class: bookkeeping shared by all layers (parameters, device, dtype, errors)."""

    def forward(self, x, training: bool = True):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __call__(self, x, training: bool = True):
        return self.forward(x, training)

    def output_shape(self, input_shape):
        """Shape of one output sample for one input sample (C, H, W); elementwise: the same."""
        return tuple(input_shape)

    # -- parameters and state -------------------------------------------------------------
    def named_parameters(self) -> dict[str, Parameter]:
        """Parameters by attribute name, in the order they were created."""
        return {k: v for k, v in vars(self).items() if isinstance(v, Parameter)}

    def parameters(self) -> list[Parameter]:
        return list(self.named_parameters().values())

    def named_buffers(self) -> dict[str, object]:
        """Non-trainable state saved with the model (e.g. batch-norm running statistics)."""
        return {}

    def _set_buffer(self, name: str, value) -> None:
        setattr(self, name, value)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad[...] = 0

    def astype(self, dtype):
        """Convert every parameter and buffer to ``dtype`` (float64 for gradient checks)."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = p.grad.astype(dtype)
        for name, buf in self.named_buffers().items():
            self._set_buffer(name, buf.astype(dtype))
        return self

    def to(self, device: str):
        """Move parameters and buffers to "cpu" (NumPy) or "gpu" (CuPy)."""
        if device in ("gpu", "cuda", "cupy"):
            import cupy
            move = cupy.asarray
        elif device in ("cpu", "numpy"):
            move = asnumpy
        else:
            raise ValueError(f"{type(self).__name__}.to: unknown device {device!r}; "
                             "expected 'cpu' or 'gpu'")
        for p in self.parameters():
            p.data, p.grad = move(p.data), move(p.grad)
        for name, buf in self.named_buffers().items():
            self._set_buffer(name, move(buf))
        return self

    # -- helpers for clear errors ---------------------------------------------------------
    def _fail(self, message: str, exc=ValueError):
        raise exc(f"{type(self).__name__}: {message}")

    def _check_input(self, x, ndim: int, layout: str) -> None:
        if not hasattr(x, "ndim") or not hasattr(x, "dtype"):
            self._fail(f"expected an array of shape {layout}, got {type(x).__name__}", TypeError)
        if x.ndim != ndim:
            self._fail(f"expected a {ndim}-D input of shape {layout}, got shape {tuple(x.shape)}")
        if x.dtype.kind != "f":
            self._fail(f"expected a floating-point input, got dtype {x.dtype}", TypeError)

    def _check_dtype(self, x, weight) -> None:
        if x.dtype != weight.dtype:
            self._fail(f"input dtype {x.dtype} does not match the parameters' dtype "
                       f"{weight.dtype}; convert one of them (e.g. layer.astype(np.{x.dtype}))",
                       TypeError)

    def _cached(self, cache):
        if cache is None:
            self._fail("backward() called before forward(training=True); "
                       "run a training forward pass first", RuntimeError)
        return cache

    def __repr__(self):
        return f"{type(self).__name__}()"


def he_normal(shape, fan: int, rng: np.random.Generator, dtype=np.float32):
    """He et al. (2015) initialisation: N(0, 2 / fan)."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan)).astype(dtype)
