"""From a run's configuration (a JSON-friendly dict) to data, model, optimizer and schedule.

``minivgg train`` writes the configuration to ``config.json``; ``--resume``, ``eval`` and
``predict`` rebuild the very same objects from it. DEFAULTS lists every choice.

Images smaller than the network's input (MNIST's 28x28 for a 32x32 VGG) are zero-padded
to the input size, centred: five 2x2 poolings need a side divisible by 32, and padding
keeps every pixel (resizing would blur the strokes).
"""

from __future__ import annotations

import numpy as np

from minivgg.data import (
    Compose,
    DataLoader,
    HorizontalFlip,
    Normalize,
    RandomCrop,
    load_dataset,
)
from minivgg.models import vgg
from minivgg.optim import SGD, Adam
from minivgg.schedules import make_schedule

DEFAULTS = {
    "dataset": "cifar10", "data_dir": None, "limit": None,
    "model": "A", "width": 0.25, "batch_norm": True, "head": "cifar", "hidden": [],
    "dropout": 0.5, "init": "he", "input_size": 32,
    "epochs": 20, "batch_size": 128, "eval_batch_size": 500,
    "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False,
    "weight_decay": 5e-4, "decay_all": False,
    "schedule": "cosine", "warmup": 0.0, "milestones": [], "gamma": 0.1, "step": 30,
    "patience": 2,
    "augment": "crop+flip", "crop_padding": 4,
    "backend": "auto", "seed": 0, "prefetch": 0,
}
AUGMENTS = ("none", "flip", "crop", "crop+flip")


class CentrePad:
    """Zero-pad each image to ``size`` x ``size`` (centred); larger images pass unchanged."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x, rng=None):
        dh, dw = max(self.size - x.shape[2], 0), max(self.size - x.shape[3], 0)
        if dh == dw == 0:
            return x
        return np.pad(x, ((0, 0), (0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)))

    def __repr__(self):
        return f"CentrePad({self.size})"


def load_data(config: dict):
    """The data set of ``config``, cut to ``limit`` images per split when one is given."""
    name, limit = config["dataset"], config.get("limit")
    if name == "shapes":
        n_train = 10_000 if limit is None else limit
        n_test = 2_000 if limit is None else max(limit // 5, 1)
        ds = load_dataset("shapes", n_train=n_train, n_test=n_test, seed=config["seed"])
    else:
        ds = load_dataset(name, data_dir=config.get("data_dir"))
    if limit is not None:
        ds.train_images, ds.train_labels = ds.train_images[:limit], ds.train_labels[:limit]
        ds.test_images, ds.test_labels = ds.test_images[:limit], ds.test_labels[:limit]
    return ds


def train_transform(config: dict, normalize: Normalize, image_size: int) -> Compose:
    """Padding to the input size, then the augmentation of ``config``, then normalisation."""
    augment = config["augment"]
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}; got {augment!r}")
    steps = [CentrePad(config["input_size"])] if image_size < config["input_size"] else []
    if "crop" in augment:
        steps.append(RandomCrop(config["input_size"], config["crop_padding"]))
    if "flip" in augment:
        steps.append(HorizontalFlip())
    return Compose(steps + [normalize])


def test_transform(config: dict, normalize: Normalize) -> Compose:
    return Compose([CentrePad(config["input_size"]), normalize])


def make_loaders(config: dict, ds, normalize: Normalize):
    image_size = ds.train_images.shape[2]
    train = DataLoader(ds.train_images, ds.train_labels, config["batch_size"], shuffle=True,
                       transform=train_transform(config, normalize, image_size),
                       drop_last=len(ds.train_images) > config["batch_size"],
                       seed=config["seed"], device=True, prefetch=config.get("prefetch", 0))
    test = DataLoader(ds.test_images, ds.test_labels, config["eval_batch_size"], shuffle=False,
                      transform=test_transform(config, normalize), device=True)
    return train, test


def parse_config(model: str | list):
    """A configuration name ("A", "vgg11") or a custom comma list ("16,M,32,M") -> vgg()'s."""
    if isinstance(model, str) and "," in model:
        return [item if item in ("M", "LRN") else int(item)
                for item in (part.strip() for part in model.split(",")) if item]
    return model


def make_model(config: dict, num_classes: int, in_channels: int):
    model = vgg(parse_config(config["model"]), num_classes, config["input_size"],
                head=config["head"], width=config["width"], batch_norm=config["batch_norm"],
                dropout=config["dropout"], hidden=tuple(config["hidden"]), init=config["init"],
                seed=config["seed"], in_channels=in_channels)
    first_conv = next((layer for _, layer in model.named_layers()
                       if hasattr(layer, "input_grad")), None)
    if first_conv is not None:
        first_conv.input_grad = False       # nothing upstream of the image needs a gradient
    return model


def make_optimizer(config: dict, model):
    name = config["optimizer"]
    if name == "sgd":
        return SGD(model, config["lr"], config["momentum"], config["weight_decay"],
                   config["nesterov"], config["decay_all"])
    if name == "adam":
        return Adam(model, config["lr"], weight_decay=config["weight_decay"],
                    decay_all=config["decay_all"])
    raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {name!r}")


def make_run_schedule(config: dict, steps_per_epoch: int):
    return make_schedule(config["schedule"], config["lr"], config["epochs"], steps_per_epoch,
                         warmup=config["warmup"], step=config["step"],
                         milestones=config["milestones"], gamma=config["gamma"],
                         patience=config["patience"])
