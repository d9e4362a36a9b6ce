"""Data sets, augmentation and mini-batches.

    ds = load_dataset("cifar10")            # or "cifar100", "fashion-mnist", "mnist", "shapes"
    ds.train_images                         # uint8 (N, C, H, W); ds.train_labels int64 (N,)
    norm = Normalize.from_data(ds.train_images)
    train = DataLoader(ds.train_images, ds.train_labels, batch_size=128, seed=0,
                       transform=Compose([RandomCrop(32, 4), HorizontalFlip(), norm]))
    for x, y in train: ...                  # float32 (B, C, H, W), int64 (B,)
    read_image("cat.jpg", target=32)        # one picture: uint8 (C, H, W), size-checked

A damaged data file raises CorruptDataError (a ValueError) naming the file and what to do.
"""

from minivgg.data.cifar import load_cifar10, load_cifar100
from minivgg.data.dataset import CorruptDataError, Dataset
from minivgg.data.download import DownloadError, UnsafeArchiveError
from minivgg.data.images import ImageError, prepare_image, read_image
from minivgg.data.loader import DataLoader
from minivgg.data.mnist import load_fashion_mnist, load_mnist
from minivgg.data.safe_pickle import RefusedPickleError
from minivgg.data.shapes import make_shapes
from minivgg.data.transforms import (
    Compose,
    HorizontalFlip,
    Normalize,
    PCALighting,
    RandomCrop,
    ScaleJitter,
)

LOADERS = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "shapes": None,  # generated, not loaded: see load_dataset
}
DATASETS = tuple(LOADERS)


def load_dataset(name: str, data_dir=None, download: bool = True, **kw) -> Dataset:
    """Load a data set by name: "cifar10", "cifar100", "fashion-mnist", "mnist" or "shapes".

    Extra keyword arguments go to the loader (``url=``, ``label_mode=`` for CIFAR-100;
    ``n_train=``, ``n_test=``, ``seed=`` for shapes, which ignores data_dir and download).
    """
    key = name.lower().replace("_", "-")
    key = {"cifar-10": "cifar10", "cifar-100": "cifar100", "fashionmnist": "fashion-mnist"
           }.get(key, key)
    if key not in LOADERS:
        raise ValueError(f"load_dataset: unknown data set {name!r}; expected one of {DATASETS}")
    if key == "shapes":
        return make_shapes(**kw)
    return LOADERS[key](data_dir=data_dir, download=download, **kw)


__all__ = [
    "Compose", "CorruptDataError", "DATASETS", "DataLoader", "Dataset", "DownloadError",
    "HorizontalFlip", "ImageError", "Normalize", "PCALighting", "RandomCrop",
    "RefusedPickleError", "ScaleJitter", "UnsafeArchiveError", "load_cifar10",
    "load_cifar100", "load_dataset", "load_fashion_mnist", "load_mnist", "make_shapes",
    "prepare_image", "read_image",
]
