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

import numpy as np

from minivgg.backend import get_array_module
from minivgg.layers import Conv2D, Dense, Dropout, GlobalAvgPool2D, ReLU
from minivgg.models.init import NoDraws
from minivgg.models.sequential import Sequential

# The class-score map is averaged over its positions: global average pooling.
SpatialAverage = GlobalAvgPool2D


def _as_conv(dense: Dense, channels: int, k: int) -> Conv2D:
    """The convolution that computes ``dense`` on a (channels, k, k) map."""
    w = dense.weight.data
    conv = Conv2D(channels, dense.out_features, kernel_size=k, padding=0,
                  bias=dense.bias is not None, rng=NoDraws(), dtype=w.dtype)
    xp = get_array_module(w)
    conv.weight.data = xp.ascontiguousarray(w.T.reshape(dense.out_features, channels, k, k))
    if dense.bias is not None:
        conv.bias.data = dense.bias.data.copy()
    return conv


def dense_head(classifier: Sequential, shape: tuple, average: bool = True) -> list:
    """The children that replace "flatten" and "classifier" in a dense-evaluation VGG.

    ``shape`` is the (C, h, w) feature map at the input size the classifier was built for.
    Returns [("classifier", convolutions, ReLU, Dropout), ("average", SpatialAverage())].
    """
    layers, first = [], True
    for name, layer in zip(classifier.names, classifier.layers):
        if isinstance(layer, Dense):
            c, h, w = shape if first else (shape[0], 1, 1)
            if h != w or layer.in_features != c * h * w:
                raise ValueError(f"to_dense_eval: classifier.{name} takes "
                                 f"{layer.in_features} features, but the feature map is "
                                 f"{shape}")
            layers.append((name, _as_conv(layer, c, h)))
            shape, first = (layer.out_features,), False
        elif isinstance(layer, (ReLU, Dropout)):
            layers.append((name, copy.deepcopy(layer)))
        else:
            raise ValueError(f"to_dense_eval: cannot convert classifier.{name} "
                             f"({type(layer).__name__}); expected Dense, ReLU or Dropout")
    children = [("classifier", Sequential(*layers))]
    return children + ([("average", GlobalAvgPool2D())] if average else [])


def to_dense_eval(model, average: bool = True):
    """A new VGG that evaluates ``model`` densely over images of any size >= its input size.

    ``model`` is a VGG from ``vgg()``. The result's settings say ``dense_eval=True`` (so it
    is saved and rebuilt like any VGG); it has children "features" (a copy), "classifier"
    (convolutions, ReLU, Dropout) and, with ``average=True``, "average" (GlobalAvgPool2D):
    its output is (N, classes). With ``average=False`` it returns the class-score map
    (N, classes, H', W'). The original model is not changed.
    """
    from minivgg.models.vgg import VGG
    if not isinstance(model, VGG):
        raise TypeError(f"to_dense_eval: expected a VGG built by minivgg.models.vgg(), got "
                        f"{type(model).__name__}")
    if model.settings.dense_eval:
        raise ValueError("to_dense_eval: the model is already a dense-evaluation network")
    dtype = model.parameters()[0].data.dtype
    dense = VGG(model.settings.replace(dense_eval=True, average=average), rng=NoDraws(0),
                dtype=np.dtype(dtype))
    dense.load_state_dict(dense_state(model))
    dense.train(model.training)
    return dense


def dense_state(model) -> dict:
    """``model.state_dict()`` with each classifier Dense weight reshaped as its convolution's.

    The first Dense layer's (C*h*w, M) weight becomes (M, C, h, w); the later ones' (D, M)
    weights become (M, D, 1, 1). Feature and bias arrays are unchanged.
    """
    s = model.settings
    c, h, w = model["features"].output_shape((s.in_channels, s.input_size, s.input_size))
    state, first = model.state_dict(), True
    for name, layer in zip(model["classifier"].names, model["classifier"].layers):
        if isinstance(layer, Dense):
            key = f"classifier.{name}.weight"
            k, ch = (h, c) if first else (1, layer.in_features)
            state[key] = np.ascontiguousarray(state[key].T.reshape(layer.out_features, ch, k, k))
            first = False
    return {k: v for k, v in state.items() if not k.startswith("flatten.")}
