"""Model summary: a table of layers, output shapes, parameters and multiply-accumulates.

Two ways to the same table:

- ``summarize(model, input_shape)`` reads a real model object -- its layers, their
  parameter arrays and their ``output_shape`` -- without running a forward pass.
- ``summarize_settings(settings, input_shape)`` reads only a VGG's settings (models/config.py)
  and works out every shape by hand, allocating no weights at all: ``minivgg summary vgg16
  --input 1024`` describes a 2-billion-parameter network in kilobytes of memory. The same
  walk gives ``state_shapes(settings)``, the arrays a checkpoint of those settings must
  hold, so a checkpoint is checked before a network is built from it.

The tests build real networks and check that both give identical rows.

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

from minivgg.kernels.reference import conv_output_size
from minivgg.layers import Conv2D, Dense


@dataclass
class Row:
    name: str
    kind: str
    output_shape: tuple
    params: int
    macs: int
    arrays: dict = field(default_factory=dict)    # parameter and buffer shapes by attribute
    buffers: int = 0                              # values in buffers (running statistics)


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


def _check_output(name: str, kind: str, shape: tuple, out: tuple) -> None:
    if any(s < 1 for s in out):
        raise ValueError(f"summary: layer {name} ({kind}) turns an input of shape {shape} "
                         f"into {out}; the input is too small")


def _check_dense(name: str, in_features: int, shape: tuple) -> None:
    if math.prod(shape) != in_features:
        raise ValueError(f"summary: layer {name} (Dense) takes {in_features} features, but "
                         f"receives {shape} = {math.prod(shape)}; the model was built for "
                         "another input size")


def summarize(model, input_shape) -> Summary:
    """Walk ``model.named_layers()`` from one example of ``input_shape`` (no batch axis)."""
    input_shape = tuple(int(s) for s in input_shape)
    params = model.parameters()
    dtype = params[0].data.dtype if params else None
    rows, shape = [], input_shape
    for name, layer in model.named_layers():
        try:
            out = tuple(layer.output_shape(tuple(shape)))
        except Exception as exc:
            raise ValueError(f"summary: layer {name} ({type(layer).__name__}) cannot take an "
                             f"input of shape {shape}: {exc}") from exc
        if isinstance(layer, Dense):
            _check_dense(name, layer.in_features, shape)
        _check_output(name, type(layer).__name__, shape, out)
        arrays = {k: tuple(p.data.shape) for k, p in layer.named_parameters().items()}
        buffers = {k: tuple(b.shape) for k, b in layer.named_buffers().items()}
        rows.append(Row(name, type(layer).__name__, out,
                        sum(math.prod(s) for s in arrays.values()),
                        layer_macs(layer, shape, out), {**arrays, **buffers},
                        sum(math.prod(s) for s in buffers.values())))
        shape = out
    title = getattr(model, "title", type(model).__name__)
    return _totals(Summary(title, input_shape, rows, dtype=str(dtype or "float32")),
                   dtype.itemsize if dtype is not None else 4)


def _totals(result: Summary, itemsize: int) -> Summary:
    result.trainable_params = result.total_params = sum(r.params for r in result.rows)
    result.buffer_values = sum(r.buffers for r in result.rows)
    result.macs = sum(r.macs for r in result.rows)
    result.activation_bytes = sum(math.prod(r.output_shape) for r in result.rows) * itemsize
    result.param_bytes = result.trainable_params * itemsize
    return result


# -- from the settings alone -----------------------------------------------------------------
class _Walk:
    """Rows of a VGG worked out from its settings: the layers make_features, make_classifier
    and dense_head (models/vgg.py, models/dense_eval.py) build, without building them."""

    def __init__(self, shape):
        self.rows, self.shape = [], tuple(shape)

    def add(self, name, kind, out, arrays=None, buffers=None, macs=0):
        _check_output(name, kind, self.shape, tuple(out))
        arrays, buffers = dict(arrays or {}), dict(buffers or {})
        self.rows.append(Row(name, kind, tuple(out), sum(math.prod(s) for s in arrays.values()),
                             macs, {**arrays, **buffers},
                             sum(math.prod(s) for s in buffers.values())))
        self.shape = tuple(out)

    def conv(self, name, out_channels, k, padding):
        c, h, w = self.shape
        out = (out_channels, conv_output_size(h, k, 1, padding), conv_output_size(w, k, 1, padding))
        self.add(name, "Conv2D", out, {"weight": (out_channels, c, k, k), "bias": (out_channels,)},
                 macs=out_channels * c * k * k * out[1] * out[2])

    def dense(self, name, in_features, out_features):
        _check_dense(name, in_features, self.shape)
        self.add(name, "Dense", (out_features,),
                 {"weight": (in_features, out_features), "bias": (out_features,)},
                 macs=in_features * out_features)


def _features(walk: _Walk, settings) -> None:
    from minivgg.models.vgg import scaled_channels
    i = 0
    for item in settings.layers:
        name = f"features.{i}"
        c, h, w = walk.shape
        if item == "M":
            walk.add(name, "MaxPool2D", (c, conv_output_size(h, 2, 2, 0),
                                         conv_output_size(w, 2, 2, 0)))
        elif item == "LRN":
            walk.add(name, "LocalResponseNorm", walk.shape)
        else:
            channels, k = item if isinstance(item, tuple) else (item, 3)
            channels = scaled_channels(channels, settings.width)
            walk.conv(name, channels, k, k // 2)
            if settings.batch_norm:
                i += 1
                walk.add(f"features.{i}", "BatchNorm2D", walk.shape,
                         {"gamma": (channels,), "beta": (channels,)},
                         {"running_mean": (channels,), "running_var": (channels,)})
            i += 1
            walk.add(f"features.{i}", "ReLU", walk.shape)
        i += 1


def _built_for(settings) -> tuple:
    """The feature map (C, h, w) at the input size the network is built for."""
    walk = _Walk((settings.in_channels, settings.input_size, settings.input_size))
    try:
        _features(walk, settings)
    except ValueError:
        raise ValueError(f"vgg: input_size {settings.input_size} is too small for "
                         f"configuration {settings.config}: its {settings.layers.count('M')} "
                         "max-pools leave no pixels") from None
    return walk.shape


def _classifier(walk: _Walk, settings, built: tuple) -> None:
    sizes = (settings.fc_width, settings.fc_width) if settings.head == "imagenet" \
        else settings.hidden
    widths = [math.prod(built), *sizes, settings.num_classes]
    if not settings.dense_eval:
        walk.add("flatten", "Flatten", (math.prod(walk.shape),))
    for j, (d, m) in enumerate(zip(widths, widths[1:])):
        name = f"classifier.{3 * j}"
        if settings.dense_eval:     # Dense -> Conv2D: built-for map kernel first, then 1x1
            walk.conv(name, m, built[1] if j == 0 else 1, 0)
        else:
            walk.dense(name, d, m)
        if j < len(sizes):
            walk.add(f"classifier.{3 * j + 1}", "ReLU", walk.shape)
            walk.add(f"classifier.{3 * j + 2}", "Dropout", walk.shape)
    if settings.dense_eval and settings.average:
        walk.add("average", "GlobalAvgPool2D", walk.shape[:1])


def settings_rows(settings, input_shape=None) -> list[Row]:
    """The summary rows of ``VGG(settings)`` on one example of ``input_shape``."""
    built = _built_for(settings)
    walk = _Walk(input_shape or (settings.in_channels, settings.input_size, settings.input_size))
    _features(walk, settings)
    _classifier(walk, settings, built)
    return walk.rows


def summarize_settings(settings, input_shape=None) -> Summary:
    """The summary of ``VGG(settings)`` (float32) without building it: no weights allocated."""
    input_shape = tuple(int(s) for s in (input_shape or (settings.in_channels,
                                                         settings.input_size,
                                                         settings.input_size)))
    rows = settings_rows(settings, input_shape)
    return _totals(Summary(settings.title, input_shape, rows), 4)


def state_shapes(settings) -> dict[str, tuple]:
    """{state_dict key: shape} of ``VGG(settings)``: what its checkpoint's arrays must be."""
    return {f"{row.name}.{attr}": shape for row in settings_rows(settings)
            for attr, shape in row.arrays.items()}


# -- the table -------------------------------------------------------------------------------
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
