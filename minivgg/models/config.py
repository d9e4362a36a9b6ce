"""The paper's Table 1 as data, and the settings that describe one VGG network.

A configuration is a list read left to right, as a column of Table 1:

    64          a 3x3 convolution with 64 output channels (padding 1), then ReLU
    (256, 1)    a 1x1 convolution with 256 output channels (configuration C), then ReLU
    "LRN"       local response normalisation (configuration A-LRN)
    "M"         2x2 max-pooling, stride 2

``VGGSettings`` holds every choice that shapes a network (configuration, classes, input
size, head, width, batch norm, ...). It is what a checkpoint saves, so that any saved
model -- a custom configuration or a dense-evaluation one included -- can be rebuilt, and
what a resumed run compares against.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_config(config) -> tuple[str, list]:
    """A configuration name ("A".."E", "A-LRN", "vgg11".."vgg19") or list -> (name, list)."""
    if isinstance(config, str):
        key = ALIASES.get(config.lower(), config.upper())
        if key not in VGG_CONFIGS:
            raise ValueError(f"vgg: unknown configuration {config!r}; expected one of "
                             f"{sorted(VGG_CONFIGS)} or {sorted(ALIASES)}")
        return key, list(VGG_CONFIGS[key])
    if not isinstance(config, (list, tuple)):
        raise TypeError(f"vgg: expected a configuration name such as 'A' or 'vgg16', or a "
                        f"list such as [64, 'M', 128, 'M'], got {config!r}")
    # a list entry [256, 1] (as a configuration reads back from JSON) means (256, 1)
    items = [tuple(item) if isinstance(item, list) else item for item in config]
    for item in items:
        ok = (item in ("M", "LRN") or (_is_int(item) and item > 0)
              or (isinstance(item, tuple) and len(item) == 2 and _is_int(item[0])
                  and item[0] > 0 and item[1] in (1, 3)))
        if not ok:
            raise ValueError(f"vgg: bad configuration entry {item!r}; expected a channel "
                             "count, (channels, 1) or (channels, 3), 'M' or 'LRN'")
    if not any(item not in ("M", "LRN") for item in items):
        raise ValueError(f"vgg: the configuration {list(config)!r} has no convolution; "
                         "expected at least one channel count")
    return "custom", items


@dataclass(frozen=True)
class VGGSettings:
    """Everything that decides a VGG network's layers and shapes (not its weights).

    config       "A".."E", "A-LRN" (aliases "vgg11".."vgg19" are resolved), or a custom list
    num_classes  outputs of the last layer
    input_size   the side S of the square input the network is built for
    head         "imagenet" (fc_width, fc_width, classes) or "cifar" (``hidden``, classes)
    width        multiplies every convolution's channel count
    batch_norm   a BatchNorm2D after every convolution, before its ReLU
    dropout      probability of dropping, after each hidden Dense layer
    hidden       the cifar head's hidden Dense sizes
    fc_width     the imagenet head's hidden size (4096 in the paper)
    init         "he" (torchvision's) or "paper" (N(0, 10^-2))
    in_channels  3 for colour, 1 for MNIST-like images
    dense_eval   the head as convolutions, for images larger than input_size (Sect. 3.2)
    average      with dense_eval: average the class-score map into one score per image
    """

    config: str | tuple = "D"
    num_classes: int = 1000
    input_size: int = 224
    head: str = "imagenet"
    width: float = 1.0
    batch_norm: bool = False
    dropout: float = 0.5
    hidden: tuple = ()
    fc_width: int = 4096
    init: str = "he"
    in_channels: int = 3
    dense_eval: bool = False
    average: bool = True

    def __post_init__(self):
        name, items = resolve_config(self.config)
        set_ = lambda k, v: object.__setattr__(self, k, v)   # noqa: E731 (frozen dataclass)
        set_("config", name if name != "custom" else tuple(items))
        set_("hidden", tuple(self.hidden))
        for key in ("num_classes", "input_size", "fc_width", "in_channels"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ValueError(f"vgg: {key} must be a positive integer, got {value!r}")
        for size in self.hidden:
            if not _is_int(size) or size < 1:
                raise ValueError(f"vgg: hidden sizes must be positive integers, got "
                                 f"{list(self.hidden)!r}")
        if not isinstance(self.width, (int, float)) or not math.isfinite(self.width) \
                or self.width <= 0:
            raise ValueError(f"vgg: width must be a positive finite number, got {self.width!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"vgg: dropout must be in [0, 1), got {self.dropout!r}")
        if self.head not in HEADS:
            raise ValueError(f"vgg: unknown head {self.head!r}; expected one of {HEADS}")
        if self.init not in INITS:
            raise ValueError(f"vgg: unknown init {self.init!r}; expected one of {INITS}")
        for key in ("batch_norm", "dense_eval", "average"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"vgg: {key} must be True or False, got "
                                 f"{getattr(self, key)!r}")

    @property
    def layers(self) -> list:
        """The configuration as a list (custom entries as tuples)."""
        return resolve_config(list(self.config) if isinstance(self.config, tuple)
                              else self.config)[1]

    @property
    def title(self) -> str:
        name = self.config if isinstance(self.config, str) else "custom"
        return (f"VGG-{name}" + ("-BN" if self.batch_norm else "")
                + (" (dense evaluation)" if self.dense_eval else ""))

    def to_dict(self) -> dict:
        """A JSON-friendly dict (lists for tuples); ``from_dict`` reads it back."""
        d = dataclasses.asdict(self)
        if isinstance(self.config, tuple):
            d["config"] = [list(item) if isinstance(item, tuple) else item
                           for item in self.config]
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VGGSettings:
        """Settings from ``to_dict``'s output; unknown keys are an error, not ignored."""
        if not isinstance(d, dict):
            raise TypeError(f"VGGSettings.from_dict: expected a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"VGGSettings.from_dict: unknown settings {unknown}; expected "
                             f"some of {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("config"), list):
            d["config"] = tuple(tuple(i) if isinstance(i, list) else i for i in d["config"])
        return cls(**d)

    def replace(self, **changes) -> VGGSettings:
        return dataclasses.replace(self, **changes)
