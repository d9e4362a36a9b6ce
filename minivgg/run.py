"""One run, built from its configuration: data, normalisation, model, device, loaders,
optimizer and schedule, in one place.

    run = build_run({**DEFAULTS, "dataset": "shapes", "epochs": 3})
    run.model, run.optimizer, run.schedule, run.train_loader, run.val_loader, run.test_loader

``minivgg train`` writes the configuration to ``config.json``; ``--resume`` rebuilds the very
same objects from it, and ``eval`` and ``predict`` rebuild them from a checkpoint (whose
settings and normalisation replace the fresh ones). DEFAULTS lists every choice.

Model selection never looks at the test set: ``val_split`` of the training images (10 % by
default, drawn with the run's seed) are held out as a validation set, and the
normalisation statistics come from the remaining training part only.

Images smaller than the network's input (MNIST's 28x28 for a 32x32 VGG) are zero-padded
to the input size, centred: five 2x2 poolings need a side divisible by 32, and padding
keeps every pixel (resizing would blur the strokes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minivgg.checkpoint import Checkpoint, RunFacts, check_arrays_fit, unusable
from minivgg.data import (
    Compose,
    DataLoader,
    Dataset,
    HorizontalFlip,
    Normalize,
    RandomCrop,
    load_dataset,
)
from minivgg.layers import Conv2D
from minivgg.models import VGG, VGGSettings, vgg
from minivgg.optim import SGD, Adam
from minivgg.schedules import make_schedule as schedule_by_name

DEFAULTS = {
    "dataset": "cifar10", "data_dir": None, "limit": None, "val_split": 0.1,
    "model": "A", "width": 0.25, "batch_norm": True, "head": "cifar", "hidden": [],
    "dropout": 0.5, "init": "he", "input_size": 32,
    "epochs": 20, "batch_size": 128, "eval_batch_size": 500,
    "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False,
    "weight_decay": 5e-4, "decay_all": False,
    "schedule": "cosine", "warmup": 0.0, "milestones": [], "gamma": 0.1, "step": 30,
    "patience": 2,
    "augment": "crop+flip", "crop_padding": 4,
    "backend": "auto", "seed": 0, "prefetch": 0,
    "sync_bn": False,
}
# Runs saved before the validation split existed trained on every training image.
BEFORE_VALIDATION = {"val_split": 0.0}
AUGMENTS = ("none", "flip", "crop", "crop+flip")
OPTIMIZERS = {
    "sgd": lambda model, c: SGD(model, c["lr"], c["momentum"], c["weight_decay"],
                                c["nesterov"], c["decay_all"]),
    "adam": lambda model, c: Adam(model, c["lr"], weight_decay=c["weight_decay"],
                                  decay_all=c["decay_all"]),
}


def saved_config(saved: dict) -> dict:
    """A configuration read back from config.json or a checkpoint, completed with defaults."""
    return {**DEFAULTS, **BEFORE_VALIDATION, **saved}


def select_backend(name: str) -> tuple[str, str]:
    """Set the backend ("auto", "numpy", "numba", "cupy") -> (its resolved name, device)."""
    from minivgg.backend import set_backend
    from minivgg.device import resolve_device
    backend = set_backend(name)
    return backend, resolve_device("gpu" if backend == "cupy" else "cpu")


# -- data --------------------------------------------------------------------------------------
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


def load_data(config: dict) -> Dataset:
    """The data set of ``config``, cut to its first ``limit`` images per split if given."""
    name, limit = config["dataset"], config.get("limit")
    if name == "shapes":
        n_train = 10_000 if limit is None else limit
        n_test = 2_000 if limit is None else max(limit // 5, 1)
        ds = load_dataset("shapes", n_train=n_train, n_test=n_test, seed=config["seed"])
    else:
        ds = load_dataset(name, data_dir=config.get("data_dir"))
    if limit is None:
        return ds
    return Dataset(ds.name, ds.train_images[:limit], ds.train_labels[:limit],
                   ds.test_images[:limit], ds.test_labels[:limit], list(ds.classes))


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation) of ``n`` training images: ``fraction`` of them, drawn
    with ``seed``, held out for model selection; both in their original order."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_split must be in [0, 1); got {fraction!r}")
    n_val = 0 if fraction == 0 else max(1, int(round(n * fraction)))
    if n_val >= n:
        raise ValueError(f"val_split {fraction} of {n} training images leaves none to train "
                         "on; use more images (--limit) or a smaller --val-split")
    order = np.random.default_rng([seed, 0x76616C]).permutation(n)   # its own stream
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def augmentation(config: dict, image_size: int) -> Compose:
    """Padding to the input size, then the augmentation of ``config``: uint8 in, uint8 out."""
    augment = config["augment"]
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}; got {augment!r}")
    steps = [CentrePad(config["input_size"])] if image_size < config["input_size"] else []
    if "crop" in augment:
        steps.append(RandomCrop(config["input_size"], config["crop_padding"]))
    if "flip" in augment:
        steps.append(HorizontalFlip())
    return Compose(steps)


def train_transform(config: dict, normalize: Normalize, image_size: int) -> Compose:
    """Padding to the input size, then the augmentation of ``config``, then normalisation."""
    return Compose(augmentation(config, image_size).transforms + [normalize])


def test_transform(config: dict, normalize: Normalize) -> Compose:
    """What evaluation, prediction and the figures see: padding and normalisation only."""
    return Compose([CentrePad(config["input_size"]), normalize])


def _eval_loader(config, images, labels, normalize, num_classes, batch=None):
    """Padding on the host; uint8 to the device, normalised there."""
    batch = config["eval_batch_size"] if batch is None else batch
    return DataLoader(images, labels, batch, shuffle=False,
                      transform=CentrePad(config["input_size"]), normalize=normalize,
                      device=True, num_classes=num_classes)


# -- model, optimizer, schedule ----------------------------------------------------------------
def parse_model(model: str | list):
    """A configuration name ("A", "vgg11") or a custom comma list ("16,M,32,M") -> vgg()'s."""
    if isinstance(model, str) and "," in model:
        return [part if part in ("M", "LRN") else int(part)
                for part in (p.strip() for p in model.split(","))]
    return model


def _no_input_gradient(model) -> VGG:
    """Nothing upstream of the image needs a gradient: the first convolution skips it."""
    first = next((layer for _, layer in model.named_layers() if isinstance(layer, Conv2D)), None)
    if first is not None:
        first.input_grad = False
    return model


def make_model(config: dict, num_classes: int, in_channels: int) -> VGG:
    """A fresh VGG with the weights that ``config["seed"]`` draws."""
    return _no_input_gradient(vgg(
        parse_model(config["model"]), num_classes, config["input_size"], head=config["head"],
        width=config["width"], batch_norm=config["batch_norm"], dropout=config["dropout"],
        hidden=tuple(config["hidden"]), init=config["init"], seed=config["seed"],
        in_channels=in_channels))


def model_from_checkpoint(ckpt: Checkpoint) -> VGG:
    """The network a checkpoint describes, with its weights.

    The arrays are checked against the shapes the settings imply (worked out from shapes
    alone) before anything is built, so a damaged or hostile checkpoint claiming a huge
    network is refused without allocating it.
    """
    from minivgg.summary import state_shapes
    try:
        settings = VGGSettings.from_dict(ckpt.facts.settings)
        expected = state_shapes(settings)
    except (TypeError, ValueError) as exc:
        raise unusable(ckpt.path, f"its model settings are not valid ({exc})") from None
    check_arrays_fit(ckpt, expected)
    model = VGG.from_spec(settings.to_dict())
    model.load_state_dict(ckpt.model_state)
    return _no_input_gradient(model)


def make_optimizer(config: dict, model):
    name = config["optimizer"]
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}; got {name!r}")
    return OPTIMIZERS[name](model, config)


def make_schedule(config: dict, steps_per_epoch: int):
    if config["schedule"] == "plateau" and not config.get("val_split"):
        raise ValueError("the 'plateau' schedule reduces the learning rate when validation "
                         "accuracy stops improving, so it needs a validation split: "
                         "--val-split > 0")
    return schedule_by_name(config["schedule"], config["lr"], config["epochs"],
                            steps_per_epoch, warmup=config["warmup"], step=config["step"],
                            milestones=config["milestones"], gamma=config["gamma"],
                            patience=config["patience"])


# -- the run ---------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything a configuration builds. Loaders are None when built without data."""

    config: dict
    backend: str                 # "numpy", "numba" or "cupy"
    device: str                  # "cpu" or "gpu": where the model and the batches live
    classes: list
    image_shape: tuple           # (C, H, W) of the data set's images
    normalize: Normalize
    model: VGG
    optimizer: object
    schedule: object
    dataset: Dataset | None = None
    train_loader: DataLoader | None = None
    val_loader: DataLoader | None = None
    test_loader: DataLoader | None = None

    @property
    def facts(self) -> RunFacts:
        """What every checkpoint of this run records about the model and the data."""
        return RunFacts(self.model.spec, list(self.classes), self.normalize.state_dict(),
                        list(self.image_shape), self.config)


def build_run(config: dict, *, dataset: Dataset | None = None,
              checkpoint: Checkpoint | None = None, with_data: bool = True) -> Run:
    """Build the run ``config`` describes, on the device its "backend" selects.

    dataset:     use these images instead of loading ``config["dataset"]`` (lessons, bench)
    checkpoint:  take the model (settings and weights), classes and normalisation from it
    with_data:   False builds no data and no loaders (predict); needs a checkpoint
    """
    backend, device = select_backend(config["backend"])
    ds = parts = None
    if with_data:
        ds = dataset if dataset is not None else load_data(config)
        parts = _training_parts(ds, config)
    elif checkpoint is None:
        raise ValueError("build_run: with_data=False needs a checkpoint for the classes and "
                         "the normalisation")
    if checkpoint is not None:
        classes, image_shape, normalize = _data_facts(checkpoint)
        model = model_from_checkpoint(checkpoint)
    else:
        classes, image_shape = list(ds.classes), ds.image_shape
        normalize = Normalize.from_data(parts["train"][0])
        model = make_model(config, len(classes), image_shape[0])
    optimizer = make_optimizer(config, model)
    run = Run(config, backend, device, classes, image_shape, normalize, model, optimizer,
              None, ds)
    if with_data:
        _add_loaders(run, ds, parts)
    run.schedule = make_schedule(config, len(run.train_loader) if with_data else 1)
    from minivgg.device import place
    place(model, optimizer, device)
    return run


def _data_facts(ckpt: Checkpoint) -> tuple:
    """(classes, image shape, Normalize) that a checkpoint records, or a RunFileError."""
    facts = ckpt.facts
    try:
        classes, image_shape = list(facts.classes), tuple(int(s) for s in facts.image_shape)
        normalize = Normalize(**facts.normalize)
        if len(image_shape) != 3 or len(normalize.mean) != image_shape[0]:
            raise ValueError(f"image shape {image_shape}, normalisation {facts.normalize}")
    except (TypeError, ValueError) as exc:
        raise unusable(ckpt.path, "it does not record the classes, image shape and "
                       f"normalisation that evaluation needs ({exc})") from None
    return classes, image_shape, normalize


def _training_parts(ds: Dataset, config: dict) -> dict:
    """{"train": (images, labels), "val": (images, labels)}: the validation split held out."""
    train, val = split_validation(len(ds.train_labels), config["val_split"], config["seed"])
    if not len(val):                                  # no copy of the whole training set
        return {"train": (ds.train_images, ds.train_labels), "val": None}
    return {"train": (ds.train_images[train], ds.train_labels[train]),
            "val": (ds.train_images[val], ds.train_labels[val])}


def _add_loaders(run: Run, ds: Dataset, parts: dict) -> None:
    config, (images, labels), k = run.config, parts["train"], len(run.classes)
    run.train_loader = DataLoader(          # copied as uint8; cropped, flipped and normalised
                                            # on the device (PCA lighting, scale jitter: host)
        images, labels, config["batch_size"], shuffle=True,
        transform=augmentation(config, ds.image_shape[1]), normalize=run.normalize,
        drop_last=len(labels) > config["batch_size"], seed=config["seed"], device=True,
        prefetch=config.get("prefetch", 0), num_classes=k)
    batch = eval_batch_size(run)
    if parts["val"] is not None:
        run.val_loader = _eval_loader(config, *parts["val"], run.normalize, k, batch)
    run.test_loader = _eval_loader(config, ds.test_images, ds.test_labels, run.normalize, k,
                                   batch)


def eval_batch_size(run: Run) -> int:
    """The configured evaluation batch; on the GPU, no larger than the device holds
    (minivgg/memory.py: VGG-16 at 224 evaluates in batches of ~420 on a 24 GB card)."""
    batch = run.config["eval_batch_size"]
    if run.device != "gpu":
        return batch
    from minivgg.memory import device_memory_bytes, fit_eval_batch
    side = run.config["input_size"]
    return fit_eval_batch(run.model, (run.image_shape[0], side, side), device_memory_bytes(),
                          batch)
