"""Dense evaluation (the paper's Sect. 3.2): the fully connected head as convolutions.

A Dense layer that reads a flattened (C, h, w) feature map is a convolution with an h x w
kernel and no padding: output m at one position is

    sum_{c, i, j} x[c, i, j] * W[(c, i, j), m]      (W of shape (C*h*w, M), C-order rows)

which is Conv2D(C, M, kernel_size=h) with weight[m, c, i, j] = W[(c, i, j), m], i.e.
``W.T.reshape(M, C, h, w)``. The following Dense layers read a vector, so they become 1x1
convolutions (``W.T.reshape(M, D, 1, 1)``). On the input size the network was built for,
the converted network gives the same logits; on a larger image the head slides over the
feature map and gives a map of class scores -- one per 32-pixel step -- which is averaged
("sum-pooled", the paper says) into one score vector per image. The paper does this
instead of cropping many windows: the convolutions are shared by all positions.
"""

from __future__ import annotations

import copy

from minivgg.backend import get_array_module
from minivgg.layers import Conv2D, Dense, Dropout, Layer, ReLU
from minivgg.models.init import NoDraws
from minivgg.models.sequential import Sequential


class SpatialAverage(Layer):
    """(N, K, H, W) -> (N, K): the mean over the H*W positions of each map.

        y[n, k] = mean_{i, j} x[n, k, i, j]        dx[n, k, i, j] = dout[n, k] / (H * W)
    """

    def __init__(self):
        self.cache = None

    def output_shape(self, input_shape):
        return (input_shape[0],)

    def forward(self, x, training=True):
        self._check_input(x, 4, "(N, K, H, W)")
        if training:
            self.cache = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, dout):
        shape = self._cached(self.cache)
        self.cache = None
        xp = get_array_module(dout)
        return xp.broadcast_to(dout[:, :, None, None] / (shape[2] * shape[3]), shape).copy()


def _as_conv(dense: Dense, channels: int, k: int) -> Conv2D:
    """The convolution that computes ``dense`` on a (channels, k, k) map."""
    w = dense.weight.data
    conv = Conv2D(channels, dense.out_features, kernel_size=k, padding=0,
                  bias=dense.bias is not None, rng=NoDraws(), dtype=w.dtype)
    xp = get_array_module(w)
    conv.weight.data = xp.ascontiguousarray(w.T.reshape(dense.out_features, channels, k, k))
    conv.weight.grad = xp.zeros_like(conv.weight.data)
    if dense.bias is not None:
        conv.bias.data = dense.bias.data.copy()
        conv.bias.grad = xp.zeros_like(conv.bias.data)
    return conv


def to_dense_eval(model: Sequential, input_size: int | None = None, average: bool = True):
    """A new network that evaluates ``model`` densely over images of any size >= input_size.

    ``model`` is a VGG from ``vgg()`` (children "features", "flatten", "classifier");
    ``input_size`` defaults to the size it was built for (``model.spec``). The result has
    children "features" (a copy), "classifier" (convolutions, ReLU, Dropout) and, with
    ``average=True``, "average" (SpatialAverage): its output is (N, classes). With
    ``average=False`` it returns the class-score map (N, classes, H', W'). The original
    model is not changed.
    """
    for child in ("features", "classifier"):
        if child not in model.names:
            raise ValueError(f"to_dense_eval: expected a VGG with children 'features' and "
                             f"'classifier', got children {model.names}")
    spec = getattr(model, "spec", {})
    if input_size is None:
        if "input_size" not in spec:
            raise ValueError("to_dense_eval: the model has no spec; pass input_size=")
        input_size = spec["input_size"]
    features = model["features"]
    in_channels = features[0].in_channels
    shape = features.output_shape((in_channels, input_size, input_size))
    layers, first = [], True
    for name, layer in zip(model["classifier"].names, model["classifier"].layers):
        if isinstance(layer, Dense):
            c, h, w = shape if first else (shape[0], 1, 1)
            if h != w or layer.in_features != c * h * w:
                raise ValueError(f"to_dense_eval: classifier.{name} takes "
                                 f"{layer.in_features} features, but the feature map at "
                                 f"input size {input_size} is {shape}")
            layers.append((name, _as_conv(layer, c, h)))
            shape, first = (layer.out_features,), False
        elif isinstance(layer, (ReLU, Dropout)):
            layers.append((name, copy.deepcopy(layer)))
        else:
            raise ValueError(f"to_dense_eval: cannot convert classifier.{name} "
                             f"({type(layer).__name__}); expected Dense, ReLU or Dropout")
    children = [("features", copy.deepcopy(features)), ("classifier", Sequential(*layers))]
    if average:
        children.append(("average", SpatialAverage()))
    dense = Sequential(*children)
    dense.spec = dict(spec, dense_eval=True, input_size=input_size)
    dense.title = getattr(model, "title", "VGG") + " (dense evaluation)"
    return dense
