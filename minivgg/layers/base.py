"""Parameter and Layer: the two small pieces every layer is built from.

A layer is an object with ``forward(x, training)`` and ``backward(dout) -> dx``.
``forward`` keeps exactly what ``backward`` needs (the *cache*); ``backward`` fills the
``.grad`` of every parameter and returns the gradient of the layer's input. There is no
autograd and no graph: a model calls ``backward`` of its layers in reverse order.

Modes, as in PyTorch: ``layer.train()`` (the default) and ``layer.eval()`` set how a layer
computes (dropout on or off, batch statistics or running ones); ``forward(x, training=...)``
overrides the mode for one call. Whether the cache is kept is a separate switch
(``minivgg.modes.no_grad``), so ``backward`` works after an evaluation-mode forward too.
"""

from __future__ import annotations

import numpy as np

from minivgg.backend import asnumpy, check_device, device_of, get_array_module, require_cupy
from minivgg.modes import grad_enabled


def _layout(a) -> tuple:
    return (tuple(a.shape), a.dtype, device_of(a))


def _zero_grad(a):
    """A zero array like ``a``. ``zeros`` rather than ``zeros_like``: NumPy's zeros_like
    writes every element, zeros gets pages from the OS that are zero until first written,
    so a network that only runs inference never pays for its gradients (553 MB for VGG-16)."""
    return get_array_module(a).zeros(a.shape, dtype=a.dtype)


class Parameter:
    """A trainable array and its gradient: always the same shape, dtype and device.

    Assigning ``.data`` an array of another shape, dtype or device gives the parameter a
    fresh zero ``.grad`` to match (an optimizer converts its state on its next step or
    refuses a new shape); assigning ``.grad`` anything that does not match ``.data`` is
    refused. ``decay`` says whether weight decay applies (biases and batch-norm scales not).
    """

    def __init__(self, data, decay: bool = True, name: str = "Parameter"):
        self.name = name
        self._data = data
        self._grad = _zero_grad(data)
        self.decay = decay

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise TypeError(f"{self.name}.data: expected an array, got {type(value).__name__}")
        if _layout(value) != _layout(self._data):
            self._grad = _zero_grad(value)
        self._data = value

    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, value):
        if not hasattr(value, "shape") or _layout(value) != _layout(self._data):
            got = _layout(value) if hasattr(value, "shape") else type(value).__name__
            raise ValueError(f"{self.name}.grad: expected an array of shape, dtype and device "
                             f"{_layout(self._data)} like .data, got {got}")
        self._grad = value

    @property
    def shape(self):
        return self._data.shape

    def __repr__(self):
        return f"Parameter(shape={tuple(self._data.shape)}, dtype={self._data.dtype})"


class Layer:
    """Base class: bookkeeping shared by all layers (modes, parameters, device, errors)."""

    training = True          # the mode; train() and eval() set it on the instance

    def forward(self, x, training: bool | None = None):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __call__(self, x, training: bool | None = None):
        return self.forward(x, training)

    def output_shape(self, input_shape):
        """Shape of one output sample for one input sample (C, H, W); elementwise: the same."""
        return tuple(input_shape)

    # -- modes ------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Training mode (dropout on, batch statistics); returns the layer."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode (dropout off, running statistics); returns the layer."""
        return self.train(False)

    def _is_training(self, training) -> bool:
        """The mode of this call: ``training`` when given, else the layer's mode."""
        return self.training if training is None else bool(training)

    def _keep(self, cache) -> None:
        """Keep ``cache`` for backward, unless gradients are off (``no_grad``)."""
        self.cache = cache if grad_enabled() else None

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

    def astype(self, dtype):
        """Convert every parameter and buffer to ``dtype`` (float64 for gradient checks)."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            self._fail(f"astype: expected a floating-point dtype, got {dtype}", TypeError)
        for p in self.parameters():
            p.data = p.data.astype(dtype)
        for name, buf in self.named_buffers().items():
            self._set_buffer(name, buf.astype(dtype))
        return self

    def to(self, device: str):
        """Move parameters and buffers to "cpu" (NumPy) or "gpu" (CuPy).

        ``minivgg.device.place`` moves a model together with its optimizer's state.
        """
        device = check_device(device, f"{type(self).__name__}.to")
        move = require_cupy(f"{type(self).__name__}.to('gpu')").asarray \
            if device == "gpu" else asnumpy
        for p in self.parameters():
            p.data = move(p.data)
        for name, buf in self.named_buffers().items():
            self._set_buffer(name, move(buf))
        self.cache = None
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
        if x.shape[0] == 0:
            self._fail(f"expected at least one example, got an empty batch of shape "
                       f"{tuple(x.shape)}")

    def _check_dtype(self, x, weight) -> None:
        if x.dtype != weight.dtype:
            self._fail(f"input dtype {x.dtype} does not match the parameters' dtype "
                       f"{weight.dtype}; convert one of them (e.g. layer.astype(np.{x.dtype}))",
                       TypeError)

    def _check_grad(self, dout, shape) -> None:
        """The upstream gradient must have the shape the last forward returned."""
        if not hasattr(dout, "shape") or tuple(dout.shape) != tuple(shape):
            got = tuple(dout.shape) if hasattr(dout, "shape") else type(dout).__name__
            self._fail(f"backward: expected a gradient of shape {tuple(shape)} (the shape "
                       f"forward returned), got {got}")

    def _cached(self, cache):
        if cache is None:
            self._fail("backward() called before forward() (or after a forward under "
                       "no_grad(), which keeps nothing); run forward first", RuntimeError)
        return cache

    def __repr__(self):
        return f"{type(self).__name__}()"


def he_normal(shape, fan: int, rng: np.random.Generator, dtype=np.float32):
    """He et al. (2015) initialisation: N(0, 2 / fan), drawn in ``dtype`` (no float64
    temporary for float32 weights: a full VGG's first Dense layer alone is 100 M values)."""
    return normal(shape, np.sqrt(2.0 / fan), rng, dtype)


def normal(shape, std: float, rng: np.random.Generator, dtype=np.float32):
    """N(0, std^2) in ``dtype``: drawn directly in float32 or float64, scaled in place."""
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64) and isinstance(rng, np.random.Generator):
        w = rng.standard_normal(shape, dtype=dtype)
    else:
        w = np.asarray(rng.standard_normal(shape)).astype(dtype)
    w *= dtype.type(std)
    return w
