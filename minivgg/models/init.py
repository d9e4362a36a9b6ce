"""Initialising a deep VGG from a trained shallow one, as the paper did (Sect. 3.1).

    "To circumvent this problem [bad initialisation stalling learning in deep nets], we
    began with training the configuration A, shallow enough to be trained with random
    initialisation. Then, when training deeper architectures, we initialised the first
    four convolutional layers and the last three fully-connected layers with the layers
    of net A (the intermediate layers were initialised randomly)."

"The first four convolutional layers" of A are, in Caffe's names, conv1_1, conv2_1,
conv3_1 and conv3_2 (A has one convolution in blocks 1 and 2, two in block 3). A deeper
configuration has layers of the same names and shapes -- conv1_1 is 3->64, conv2_1 is
64->128, conv3_1 is 128->256, conv3_2 is 256->256 in B, C, D and E alike -- while its
*positionally* second convolution (conv1_2, 64->64) has no counterpart in A. So weights
are copied by name: block b, position i within the block.
"""

from __future__ import annotations

import numpy as np

from minivgg.layers import Conv2D, Dense, MaxPool2D

PAPER_CONVS = ("conv1_1", "conv2_1", "conv3_1", "conv3_2")


def conv_names(model) -> dict[str, tuple[str, Conv2D]]:
    """Caffe-style names of a VGG's convolutions: conv{block}_{position} -> (path, layer).

    Blocks are separated by max-pooling layers, counted from 1.
    """
    names, block, position = {}, 1, 0
    for path, layer in model.named_layers():
        if isinstance(layer, MaxPool2D):
            block, position = block + 1, 0
        elif isinstance(layer, Conv2D):
            position += 1
            names[f"conv{block}_{position}"] = (path, layer)
    return names


def dense_layers(model) -> list[tuple[str, Dense]]:
    return [(path, layer) for path, layer in model.named_layers() if isinstance(layer, Dense)]


def _check_pair(dst_name, dst, src_name, src) -> None:
    """Raise unless ``src``'s weight and bias can be copied into ``dst``'s."""
    for attr in ("weight", "bias"):
        d, s = getattr(dst, attr), getattr(src, attr)
        if (d is None) != (s is None):
            raise ValueError(f"init_from: {dst_name} and {src_name} differ in having a {attr}")
        if d is not None and d.data.shape != s.data.shape:
            raise ValueError(f"init_from: cannot copy {src_name}.{attr} of shape "
                             f"{tuple(s.data.shape)} into {dst_name}.{attr} of shape "
                             f"{tuple(d.data.shape)}; the two networks must share these "
                             "layers' shapes (same width, num_classes, input_size, fc_width)")


def init_from(deep_model, trained_a, convs=PAPER_CONVS) -> list[tuple[str, str]]:
    """Copy A's first four convolutions and its fully connected layers into ``deep_model``.

    ``convs`` are the Caffe-style names copied (see the module docstring); every Dense
    layer is copied pairwise (the paper's three). Layers not copied keep their random
    initialisation, batch-norm layers included. Every shape is checked before anything is
    written, so on an error the deep model is unchanged. Returns the (destination, source)
    paths copied.
    """
    deep, shallow = conv_names(deep_model), conv_names(trained_a)
    pairs = []
    for name in convs:
        for model_name, table in (("deep model", deep), ("trained model", shallow)):
            if name not in table:
                raise ValueError(f"init_from: the {model_name} has no convolution {name} "
                                 f"(it has {', '.join(table) or 'none'})")
        pairs.append((deep[name], shallow[name]))
    deep_fc, shallow_fc = dense_layers(deep_model), dense_layers(trained_a)
    if len(deep_fc) != len(shallow_fc):
        raise ValueError(f"init_from: the deep model has {len(deep_fc)} Dense layers and the "
                         f"trained model {len(shallow_fc)}; expected the same head")
    pairs += list(zip(deep_fc, shallow_fc))
    for (dst_name, dst), (src_name, src) in pairs:
        _check_pair(dst_name, dst, src_name, src)
    for (_, dst), (_, src) in pairs:
        dst.weight.data[...] = src.weight.data
        if dst.bias is not None:
            dst.bias.data[...] = src.bias.data
    return [(d[0], s[0]) for d, s in pairs]


class NoDraws(np.random.Generator):
    """A Generator whose normal draws are zeros: for layers whose weights are overwritten
    (or never read, as by ``summary``) right after construction, so building them does not
    cost millions of random numbers. Everything else behaves as ``default_rng(seed)``.
    """

    def __init__(self, seed: int = 0):
        super().__init__(np.random.PCG64(seed))

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        if out is not None:
            out[...] = 0
            return out
        return np.zeros(size, dtype)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return np.full(size, loc, dtype=np.float64)
