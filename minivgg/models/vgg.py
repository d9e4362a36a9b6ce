"""The VGG family (Simonyan & Zisserman, 2014): the paper's Table 1 as data, one builder.

A configuration is a list read left to right, as a column of Table 1:

    64          a 3x3 convolution with 64 output channels (padding 1), then ReLU
    (256, 1)    a 1x1 convolution with 256 output channels (configuration C), then ReLU
    "LRN"       local response normalisation (configuration A-LRN)
    "M"         2x2 max-pooling, stride 2

``vgg(config, ...)`` turns any configuration into a Sequential with three children, named
as in torchvision so that ``state_dict()`` keys line up with torchvision's VGG
(``features.0.weight``, ``classifier.0.weight``, ...):

    features    the convolutions, (batch norms,) ReLUs, LRN and max-pools
    flatten     (N, C, h, w) -> (N, C*h*w)
    classifier  the fully connected head

Heads:

    "imagenet"  the paper's: Dense 4096, ReLU, Dropout, Dense 4096, ReLU, Dropout, Dense classes.
                At input size S the first Dense takes 512*(S/32)^2 features (25,088 at 224):
                the network is built for one input size. To evaluate larger images with a
                network built for 224, convert the head to convolutions (``to_dense_eval``,
                the paper's dense evaluation) instead of resizing.
    "cifar"     Dense from the flattened features (512*width at 32x32) to the classes, with
                optional hidden layers (``hidden=(512,)``: Dense 512, ReLU, Dropout first).

Initialisation ("he", the default, as torchvision): convolutions He-normal with fan-out,
Dense N(0, 0.01^2) (0.01 is the standard deviation), all biases zero, batch norm gamma = 1,
beta = 0. "paper": every weight N(0, 10^-2) -- *variance* 10^-2 as the paper's Sect. 3.1
says, so a standard deviation of 0.1 -- and zero biases. The paper trained the deeper
networks from a trained A instead (``init_from`` in minivgg.models.init).
"""

from __future__ import annotations

import numpy as np

from minivgg.layers import (
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LocalResponseNorm,
    MaxPool2D,
    ReLU,
)
from minivgg.models.sequential import Sequential

VGG_CONFIGS: dict[str, list] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M",
          512, 512, (512, 1), "M", 512, 512, (512, 1), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
          512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
ALIASES = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
HEADS = ("imagenet", "cifar")
INITS = ("he", "paper")
PAPER_STD = 0.1          # the paper's N(0, 10^-2): variance 10^-2


def resolve_config(config) -> tuple[str, list]:
    """A configuration name ("A".."E", "A-LRN", "vgg11".."vgg19") or list -> (name, list)."""
    if isinstance(config, str):
        key = ALIASES.get(config.lower(), config.upper())
        if key not in VGG_CONFIGS:
            raise ValueError(f"vgg: unknown configuration {config!r}; expected one of "
                             f"{sorted(VGG_CONFIGS)} or {sorted(ALIASES)}")
        return key, list(VGG_CONFIGS[key])
    # a list entry [256, 1] (as a configuration reads back from JSON) means (256, 1)
    items = [tuple(item) if isinstance(item, list) else item for item in config]
    for item in items:
        ok = (item in ("M", "LRN") or (isinstance(item, int) and item > 0)
              or (isinstance(item, tuple) and len(item) == 2 and item[1] in (1, 3)))
        if not ok:
            raise ValueError(f"vgg: bad configuration entry {item!r}; expected a channel "
                             "count, (channels, 1) or (channels, 3), 'M' or 'LRN'")
    return "custom", items


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def make_features(config: list, width=1.0, batch_norm=False, in_channels=3, rng=None,
                  dtype=np.float32) -> Sequential:
    """The convolutional part: each entry of the configuration becomes its layers."""
    layers, c = [], in_channels
    for item in config:
        if item == "M":
            layers.append(MaxPool2D(2, 2))
        elif item == "LRN":
            layers.append(LocalResponseNorm(n=5, k=2.0, alpha=1e-4, beta=0.75))
        else:
            out, k = item if isinstance(item, tuple) else (item, 3)
            out = _scaled(out, width)
            layers.append(Conv2D(c, out, kernel_size=k, padding=k // 2, rng=rng, dtype=dtype))
            if batch_norm:
                layers.append(BatchNorm2D(out, dtype=dtype))
            layers.append(ReLU())
            c = out
    return Sequential(*layers)


def make_classifier(in_features: int, num_classes: int, sizes=(), dropout=0.5, rng=None,
                    dtype=np.float32) -> Sequential:
    """Dense layers of the given hidden ``sizes`` (each with ReLU, Dropout), then the classes."""
    layers, d = [], in_features
    for size in sizes:
        layers += [Dense(d, size, rng=rng, dtype=dtype), ReLU(), Dropout(dropout, rng=rng)]
        d = size
    layers.append(Dense(d, num_classes, rng=rng, dtype=dtype))
    return Sequential(*layers)


def _paper_init(model: Sequential, rng: np.random.Generator) -> None:
    for _, layer in model.named_layers():
        if isinstance(layer, (Conv2D, Dense)):
            w = layer.weight.data
            w[...] = (rng.standard_normal(w.shape) * PAPER_STD).astype(w.dtype)
            if layer.bias is not None:
                layer.bias.data[...] = 0


def vgg(config="D", num_classes: int = 1000, input_size: int = 224, head: str = "imagenet",
        *, width: float = 1.0, batch_norm: bool = False, dropout: float = 0.5, hidden=(),
        fc_width: int = 4096, init: str = "he", seed: int | None = None,
        rng: np.random.Generator | None = None, in_channels: int = 3,
        dtype=np.float32) -> Sequential:
    """Build a VGG network from a configuration of Table 1 (or a custom list).

    Args:
        config: "A", "A-LRN", "B", "C", "D", "E", an alias "vgg11"/"vgg13"/"vgg16"/"vgg19",
            or a list in the same format.
        num_classes: outputs of the last Dense layer.
        input_size: the side S of the square input the network is built for.
        head: "imagenet" (fc_width, fc_width, classes) or "cifar" (flattened features ->
            classes, with ``hidden`` Dense layers in between when the cifar head is used).
        width: multiplies every convolution's channel count (0.25 -> 16, 32, 64, 128, 128).
        batch_norm: a BatchNorm2D after every convolution, before its ReLU (torchvision's
            vgg*_bn; the convolutions keep their biases).
        dropout: probability of dropping, after each hidden Dense layer.
        hidden: the cifar head's hidden Dense sizes; ``()`` for a single Dense layer.
            Ignored by the imagenet head, whose hidden sizes are (fc_width, fc_width).
        fc_width: the imagenet head's hidden size (4096 in the paper; smaller for tests).
        init: "he" (torchvision's, the default) or "paper" (N(0, 10^-2), zero biases).
        seed, rng: an int seed or a numpy Generator (not both); same seed, same weights and
            the same dropout masks.
        dtype: float32 for training, float64 for gradient checks.

    Returns a Sequential with children "features", "flatten", "classifier", and the
    arguments that rebuild it in ``model.spec`` (a JSON-friendly dict).
    """
    name, items = resolve_config(config)
    if head not in HEADS:
        raise ValueError(f"vgg: unknown head {head!r}; expected one of {HEADS}")
    if init not in INITS:
        raise ValueError(f"vgg: unknown init {init!r}; expected one of {INITS}")
    if width <= 0:
        raise ValueError(f"vgg: width must be positive, got {width}")
    if seed is not None and rng is not None:
        raise ValueError("vgg: give either seed or rng, not both")
    rng = rng if rng is not None else np.random.default_rng(seed)

    features = make_features(items, width, batch_norm, in_channels, rng, dtype)
    c, h, w = features.output_shape((in_channels, input_size, input_size))
    if h < 1 or w < 1:
        raise ValueError(f"vgg: input_size {input_size} is too small for configuration "
                         f"{name}: its {items.count('M')} max-pools leave no pixels")
    sizes = (fc_width, fc_width) if head == "imagenet" else tuple(hidden)
    classifier = make_classifier(c * h * w, num_classes, sizes, dropout, rng, dtype)
    model = Sequential(("features", features), ("flatten", Flatten()),
                       ("classifier", classifier))
    if init == "paper":
        _paper_init(model, rng)
    model.spec = {"config": name if name != "custom" else items, "num_classes": num_classes,
                  "input_size": input_size, "head": head, "width": width,
                  "batch_norm": batch_norm, "dropout": dropout, "hidden": list(sizes),
                  "fc_width": fc_width, "init": init, "in_channels": in_channels}
    model.title = f"VGG-{name}" + ("-BN" if batch_norm else "")
    return model
