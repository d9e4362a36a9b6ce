"""Models: the Sequential container and the VGG family."""

from minivgg.models.sequential import Sequential
from minivgg.models.vgg import ALIASES, VGG_CONFIGS, vgg

__all__ = ["Sequential", "vgg", "VGG_CONFIGS", "ALIASES"]
