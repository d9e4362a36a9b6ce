"""Models: the Sequential container and the VGG family."""

from minivgg.models.dense_eval import SpatialAverage, to_dense_eval
from minivgg.models.init import NoDraws, init_from
from minivgg.models.sequential import Sequential
from minivgg.models.vgg import ALIASES, VGG_CONFIGS, vgg

__all__ = ["Sequential", "vgg", "VGG_CONFIGS", "ALIASES", "init_from", "NoDraws",
           "to_dense_eval", "SpatialAverage"]
