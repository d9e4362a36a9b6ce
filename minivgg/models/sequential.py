"""Sequential: layers applied one after another, gradients passed back in reverse."""

from __future__ import annotations

import numpy as np

from minivgg import kernels
from minivgg.backend import asnumpy, get_array_module
from minivgg.layers.activations import ReLU
from minivgg.layers.base import Layer
from minivgg.layers.normalization import BatchNorm2D


class Sequential(Layer):
    """A chain of layers. Children are named "0", "1", ... or by the names given.

        model = Sequential(Conv2D(3, 8), ReLU(), MaxPool2D())
        model = Sequential(("features", Sequential(...)), ("classifier", Sequential(...)))

    ``train()`` and ``eval()`` set the mode of every layer (dropout and batch norm behave
    differently in evaluation); ``forward(x, training=None)`` runs the layers in their
    modes, or all in the mode ``training`` says; ``backward(dout)`` calls them in reverse.
    Inference is ``model.eval()`` and, to keep no caches, ``with minivgg.no_grad():``.
    Parameter names join the path with dots, e.g. ``features.0.weight``: stable,
    human-readable keys for ``state_dict()``. ``summary(input_shape)`` prints a table of
    layers, shapes, parameters and multiply-accumulates (minivgg.summary).

    A BatchNorm2D followed by a ReLU runs as ``forward(x, relu=True)`` of the batch norm
    where the Numba kernels fuse the two (``_fuses_relu``), and the ReLU layer is skipped
    both ways: the same numbers as the two layers one after the other, in fewer passes.
    """

    def __init__(self, *layers):
        self.names, self.layers = [], []
        for i, item in enumerate(layers):
            name, layer = item if isinstance(item, tuple) else (str(i), item)
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {name!r} is a {type(layer).__name__}, "
                                "not a Layer")
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"Sequential: child name {name!r} must be a non-empty "
                                 "string without dots (dots join the names of nested layers)")
            if name in self.names:
                raise ValueError(f"Sequential: two children are named {name!r}; "
                                 "names must be unique")
            self.names.append(name)
            self.layers.append(layer)
        self._fused = set()

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        if isinstance(i, str):
            return self.layers[self.names.index(i)]
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def train(self, mode: bool = True):
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def forward(self, x, training=None):
        self._fused = set()          # the ReLUs batch norm applied in its own pass
        i = 0
        while i < len(self.layers):
            layer = self.layers[i]
            if self._fuses_relu(i, x):
                x = layer.forward(x, training, relu=True)
                self.layers[i + 1].cache = None
                self._fused.add(i + 1)
                i += 2
            else:
                x = layer.forward(x, training)
                i += 1
        return x

    def backward(self, dout):
        for i in reversed(range(len(self.layers))):
            if i not in self._fused:     # a fused ReLU's gradient is batch norm's to take
                dout = self.layers[i].backward(dout)
        return dout

    def _fuses_relu(self, i, x) -> bool:
        """Whether layer i is a BatchNorm2D followed by a ReLU, and the kernels for ``x``
        apply the ReLU in batch norm's own pass (``kernels.fuses_bn_relu``): one pass over
        the activations instead of two, each way. Exactly these two classes: a subclass
        (SyncBatchNorm2D) computes its statistics its own way."""
        layers = self.layers
        return (type(layers[i]) is BatchNorm2D and i + 1 < len(layers)
                and type(layers[i + 1]) is ReLU and kernels.fuses_bn_relu(x))

    def output_shape(self, input_shape):
        """The shape of one example's output, (C, H, W) in, without running anything."""
        for layer in self.layers:
            input_shape = tuple(layer.output_shape(tuple(input_shape)))
        return input_shape

    def summary(self, input_shape, print_fn=print):
        """Print a table of layers, output shapes, parameters and multiply-accumulates.

        ``input_shape`` is one example's shape, e.g. (3, 224, 224). Returns a
        ``minivgg.summary.Summary`` (its ``str`` is the table; totals as attributes).
        """
        from minivgg.summary import summarize
        result = summarize(self, input_shape)
        if print_fn is not None:
            print_fn(str(result))
        return result

    def num_parameters(self) -> int:
        """The number of trainable scalars (buffers such as running statistics excluded)."""
        return sum(int(p.data.size) for p in self.parameters())

    # -- walking the tree -----------------------------------------------------------------
    def named_layers(self, prefix: str = ""):
        """Yield (dotted name, layer) for every leaf layer, depth first."""
        for name, layer in zip(self.names, self.layers):
            path = f"{prefix}{name}"
            if isinstance(layer, Sequential):
                yield from layer.named_layers(path + ".")
            else:
                yield path, layer

    def named_parameters(self):
        return {f"{path}.{k}": p for path, layer in self.named_layers()
                for k, p in layer.named_parameters().items()}

    def named_buffers(self):
        return {f"{path}.{k}": b for path, layer in self.named_layers()
                for k, b in layer.named_buffers().items()}

    def _set_buffer(self, name, value):
        path, attr = name.rsplit(".", 1)
        dict(self.named_layers())[path]._set_buffer(attr, value)

    # -- saving and loading ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """Every parameter and buffer as a host NumPy array (a copy), by dotted name."""
        state = {k: asnumpy(p.data).copy() for k, p in self.named_parameters().items()}
        state.update({k: asnumpy(b).copy() for k, b in self.named_buffers().items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays into the model; fail listing every missing, extra or mis-shaped key.

        Everything is checked before anything is copied, so a state that does not fit (or
        holds non-finite or non-real values) leaves the model exactly as it was.
        """
        if not isinstance(state, dict):
            raise TypeError(f"Sequential.load_state_dict: expected a dict of arrays, got "
                            f"{type(state).__name__}")
        params, buffers = self.named_parameters(), self.named_buffers()
        expected = {k: tuple(p.data.shape) for k, p in params.items()}
        expected.update({k: tuple(b.shape) for k, b in buffers.items()})
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        misshaped = [f"{k}: got {tuple(np.shape(state[k]))}, expected {expected[k]}"
                     for k in expected if k in state and tuple(np.shape(state[k])) != expected[k]]
        if missing or unexpected or misshaped:
            lines = ["Sequential.load_state_dict: the state does not fit this model"]
            if missing:
                lines.append(f"  missing keys: {', '.join(missing)}")
            if unexpected:
                lines.append(f"  unexpected keys: {', '.join(unexpected)}")
            if misshaped:
                lines.append(f"  mis-shaped: {'; '.join(misshaped)}")
            raise ValueError("\n".join(lines))
        for k in expected:
            value = np.asarray(asnumpy(state[k]))
            if value.dtype.kind not in "fiu":
                raise ValueError(f"Sequential.load_state_dict: {k} has dtype {value.dtype}; "
                                 "expected real numbers")
            if not np.isfinite(value).all():
                raise ValueError(f"Sequential.load_state_dict: {k} holds NaN or infinite "
                                 "values; refusing to load it")
        # copy in place: the arrays keep their identity, dtype and device
        for k, p in params.items():
            p.data[...] = get_array_module(p.data).asarray(state[k], dtype=p.data.dtype)
        for k, b in buffers.items():
            b[...] = get_array_module(b).asarray(state[k], dtype=b.dtype)

    def astype(self, dtype):
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def to(self, device):
        for layer in self.layers:
            layer.to(device)
        return self

    def __repr__(self):
        inner = "\n".join(f"  ({n}) " + repr(layer).replace("\n", "\n  ")
                          for n, layer in zip(self.names, self.layers))
        return f"Sequential(\n{inner}\n)"
