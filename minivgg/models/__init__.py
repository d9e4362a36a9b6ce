"""Models: the Sequential container and the VGG family."""

from minivgg.models.config import ALIASES, VGG_CONFIGS, VGGSettings
from minivgg.models.dense_eval import SpatialAverage, to_dense_eval
from minivgg.models.init import NoDraws, init_from
from minivgg.models.sequential import Sequential
from minivgg.models.vgg import VGG, vgg

__all__ = ["Sequential", "VGG", "VGGSettings", "vgg", "VGG_CONFIGS", "ALIASES", "init_from",
           "NoDraws", "to_dense_eval", "SpatialAverage"]
