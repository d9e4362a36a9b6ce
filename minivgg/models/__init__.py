"""Models: the Sequential container and the VGG family."""

from minivgg.models.sequential import Sequential

__all__ = ["Sequential"]
