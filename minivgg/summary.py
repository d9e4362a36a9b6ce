"""Model summary: a table of layers, output shapes, parameters and multiply-accumulates.

Everything is read from the real model object -- its layers, their parameter arrays and
their ``output_shape`` -- without running a forward pass, so even a 138-million-parameter
VGG at 224x224 is summarised instantly once built.

Multiply-accumulates (MACs) per image count the products of the convolutions and the
Dense layers only (biases, ReLU, pooling and normalisation are not counted), as
torchvision's model table does ("GFLOPS" there, 15.47 for VGG-16):

    Conv2D   F * C * kh * kw * OH * OW
    Dense    in_features * out_features

Activation memory is the sum of every layer's output size, per image, in the parameters'
dtype: what a training forward pass produces (a rough guide: the caches that backward
keeps are of the same order, im2col buffers come on top).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from minivgg.layers import Conv2D, Dense


@dataclass
class Row:
    name: str
    kind: str
    output_shape: tuple
    params: int
    macs: int


@dataclass
class Summary:
    """The rows of the table and its totals (``str(summary)`` is the table)."""

    title: str
    input_shape: tuple
    rows: list[Row] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    buffer_values: int = 0
    macs: int = 0
    activation_bytes: int = 0
    param_bytes: int = 0
    dtype: str = "float32"

    def __str__(self):
        return format_summary(self)

    def __repr__(self):
        return (f"Summary({self.title}: {self.total_params:,} parameters, "
                f"{self.macs / 1e9:.3f} GMACs per image)")


def layer_macs(layer, input_shape, output_shape) -> int:
    """Multiply-accumulates of one layer for one example."""
    if isinstance(layer, Conv2D):
        f, oh, ow = output_shape
        return f * layer.in_channels * layer.kernel_size ** 2 * oh * ow
    if isinstance(layer, Dense):
        return layer.in_features * layer.out_features
    return 0


def summarize(model, input_shape) -> Summary:
    """Walk ``model.named_layers()`` from one example of ``input_shape`` (no batch axis)."""
    input_shape = tuple(int(s) for s in input_shape)
    params = model.parameters()
    dtype = params[0].data.dtype if params else None
    itemsize = dtype.itemsize if dtype is not None else 4
    result = Summary(title=getattr(model, "title", type(model).__name__),
                     input_shape=input_shape, dtype=str(dtype) if dtype else "float32")
    shape = input_shape
    for name, layer in model.named_layers():
        try:
            out = tuple(layer.output_shape(tuple(shape)))
        except Exception as exc:
            raise ValueError(f"summary: layer {name} ({type(layer).__name__}) cannot take an "
                             f"input of shape {shape}: {exc}") from exc
        if isinstance(layer, Dense) and math.prod(shape) != layer.in_features:
            raise ValueError(f"summary: layer {name} (Dense) takes {layer.in_features} "
                             f"features, but receives {shape} = {math.prod(shape)}; the "
                             "model was built for another input size")
        if any(s < 1 for s in out):
            raise ValueError(f"summary: layer {name} ({type(layer).__name__}) turns an input "
                             f"of shape {shape} into {out}; the input is too small")
        n_params = sum(int(p.data.size) for p in layer.parameters())
        row = Row(name, type(layer).__name__, out, n_params, layer_macs(layer, shape, out))
        result.rows.append(row)
        result.macs += row.macs
        result.activation_bytes += math.prod(out) * itemsize
        shape = out
    result.trainable_params = sum(int(p.data.size) for p in params)
    result.total_params = result.trainable_params
    result.buffer_values = sum(int(b.size) for b in model.named_buffers().values())
    result.param_bytes = result.trainable_params * itemsize
    return result


def _human(n: float, unit: str = "") -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3f} {prefix}{unit}"
    return f"{n:g} {unit}".rstrip()


def format_summary(s: Summary) -> str:
    """Render a Summary as a Keras-style table."""
    header = ("Layer (type)", "Output shape", "Param #", "MACs")
    lines = [(f"{r.name} ({r.kind})", str(r.output_shape), f"{r.params:,}", f"{r.macs:,}")
             for r in s.rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]

    def fmt(cols):
        return (f"{cols[0]:<{widths[0]}}  {cols[1]:<{widths[1]}}  "
                f"{cols[2]:>{widths[2]}}  {cols[3]:>{widths[3]}}")
    rule = "=" * len(fmt(header))
    out = [f"{s.title}: input {s.input_shape}, {s.dtype}", rule, fmt(header), rule]
    out += [fmt(line) for line in lines]
    out += [rule,
            f"Total params: {s.total_params:,} ({s.param_bytes / 2**20:.1f} MiB)",
            f"Trainable params: {s.trainable_params:,}",
            f"Non-trainable values (buffers, e.g. running statistics): {s.buffer_values:,}",
            f"Multiply-accumulates per image: {s.macs:,} ({_human(s.macs, 'MACs')})",
            f"Activation memory per image (layer outputs): {s.activation_bytes / 2**20:.1f} MiB",
            rule]
    return "\n".join(out)
