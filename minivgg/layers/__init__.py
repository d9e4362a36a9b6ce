"""Layers with hand-written forward and backward passes."""

from minivgg.layers.activations import ReLU
from minivgg.layers.base import Layer, Parameter
from minivgg.layers.conv import Conv2D
from minivgg.layers.dense import Dense
from minivgg.layers.dropout import Dropout
from minivgg.layers.global_pool import GlobalAvgPool2D
from minivgg.layers.normalization import BatchNorm2D, LocalResponseNorm
from minivgg.layers.pooling import MaxPool2D
from minivgg.layers.reshape import Flatten
from minivgg.layers.sync_batch_norm import SyncBatchNorm2D

__all__ = ["Layer", "Parameter", "Conv2D", "MaxPool2D", "ReLU", "Dense", "Dropout", "Flatten",
           "BatchNorm2D", "LocalResponseNorm", "GlobalAvgPool2D", "SyncBatchNorm2D"]
