"""The VGG family (Simonyan & Zisserman, 2014): one model type, built from its settings.

``vgg(config, ...)`` turns any configuration of Table 1 (models/config.py) into a ``VGG``:
a Sequential with three children, named as in torchvision so that ``state_dict()`` keys
line up with torchvision's VGG (``features.0.weight``, ``classifier.0.weight``, ...):

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
from minivgg.models.config import VGGSettings
from minivgg.models.sequential import Sequential

PAPER_STD = 0.1          # the paper's N(0, 10^-2): variance 10^-2


def scaled_channels(channels: int, width: float) -> int:
    """A configuration's channel count times the width multiplier, at least 1."""
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
            out = scaled_channels(out, width)
            layers.append(Conv2D(c, out, kernel_size=k, padding=k // 2, rng=rng, dtype=dtype))
            if batch_norm:
                layers.append(BatchNorm2D(out, dtype=dtype))
            layers.append(ReLU(inplace=True))
            c = out
    return Sequential(*layers)


def make_classifier(in_features: int, num_classes: int, sizes=(), dropout=0.5, rng=None,
                    dtype=np.float32) -> Sequential:
    """Dense layers of the given hidden ``sizes`` (each with ReLU, Dropout), then the classes."""
    layers, d = [], in_features
    for size in sizes:
        layers += [Dense(d, size, rng=rng, dtype=dtype), ReLU(inplace=True),
                   Dropout(dropout, rng=rng)]
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


class VGG(Sequential):
    """A VGG network: a Sequential whose layers follow from ``settings`` (a VGGSettings).

    ``VGG(settings)`` builds the network with fresh weights; ``settings`` is saved with
    every checkpoint, so ``VGG(VGGSettings.from_dict(saved))`` rebuilds any saved model
    before its weights are loaded. ``dense_eval=True`` settings give the head as
    convolutions (children "features", "classifier"[, "average"]; see dense_eval.py).
    """

    def __init__(self, settings: VGGSettings, *, rng: np.random.Generator | None = None,
                 dtype=np.float32):
        if not isinstance(settings, VGGSettings):
            raise TypeError(f"VGG: expected VGGSettings, got {type(settings).__name__}; "
                            "use minivgg.models.vgg(...) to build from keywords")
        s = self.settings = settings
        rng = np.random.default_rng() if rng is None else rng
        features = make_features(s.layers, s.width, s.batch_norm, s.in_channels, rng, dtype)
        c, h, w = features.output_shape((s.in_channels, s.input_size, s.input_size))
        if h < 1 or w < 1:
            raise ValueError(f"vgg: input_size {s.input_size} is too small for configuration "
                             f"{s.config}: its {s.layers.count('M')} max-pools leave no pixels")
        sizes = (s.fc_width, s.fc_width) if s.head == "imagenet" else s.hidden
        classifier = make_classifier(c * h * w, s.num_classes, sizes, s.dropout, rng, dtype)
        children = [("features", features), ("flatten", Flatten()), ("classifier", classifier)]
        if s.dense_eval:
            from minivgg.models.dense_eval import dense_head
            children = [("features", features)] + dense_head(classifier, (c, h, w), s.average)
        super().__init__(*children)
        if s.init == "paper":
            _paper_init(self, rng)

    @property
    def title(self) -> str:
        return self.settings.title

    @property
    def spec(self) -> dict:
        """The settings as a JSON-friendly dict (what checkpoints store)."""
        return self.settings.to_dict()

    @classmethod
    def from_spec(cls, spec: dict, dtype=np.float32) -> VGG:
        """Rebuild the network a checkpoint's settings describe (weights not loaded).

        Builds without drawing random numbers: the weights are about to be overwritten.
        """
        from minivgg.models.init import NoDraws
        return cls(VGGSettings.from_dict(spec), rng=NoDraws(0), dtype=dtype)


def vgg(config="D", num_classes: int = 1000, input_size: int = 224, head: str = "imagenet",
        *, width: float = 1.0, batch_norm: bool = False, dropout: float = 0.5, hidden=(),
        fc_width: int = 4096, init: str = "he", seed: int | None = None,
        rng: np.random.Generator | None = None, in_channels: int = 3,
        dtype=np.float32, weights=None) -> VGG:
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
        seed, rng: a non-negative int seed or a numpy Generator (not both); same seed, same
            weights and the same dropout masks.
        dtype: float32 for training, float64 for gradient checks.
        weights: a path to trained weights (torchvision's .pth, or .safetensors) or a
            name such as "vgg16" (downloaded once into the cache): see minivgg.pretrained.

    Returns a VGG whose ``settings`` rebuild it (``VGG.from_spec(model.spec)``).
    """
    settings = VGGSettings(config, num_classes, input_size, head, width, batch_norm, dropout,
                           tuple(hidden) if not isinstance(hidden, int) else (hidden,),
                           fc_width, init, in_channels)
    if seed is not None and rng is not None:
        raise ValueError("vgg: give either seed or rng, not both")
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)
                             or seed < 0):
        raise ValueError(f"vgg: seed must be a non-negative integer, got {seed!r}")
    if np.dtype(dtype).kind != "f":
        raise TypeError(f"vgg: dtype must be a floating-point type, got {np.dtype(dtype)}")
    if weights is not None:
        from minivgg.models.init import NoDraws
        rng = NoDraws(0) if rng is None and seed is None else rng
    rng = rng if rng is not None else np.random.default_rng(seed)
    model = VGG(settings, rng=rng, dtype=dtype)
    if weights is not None:
        from minivgg import pretrained
        pretrained.load_into(model, pretrained.load_state(pretrained.resolve_weights(weights)),
                             batch_norm=batch_norm)
    return model
