"""The one container every loader returns: images and labels for a train and a test split.

Images are kept as uint8 in NCHW order (N × C × H × W), exactly as the files store them:
uint8 takes a quarter of the memory of float32, and the conversion to float happens batch
by batch in the loader. Labels are int64 class indices in ``[0, len(classes))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REFETCH_HINT = ("Delete it and run again to download a fresh copy, or point --data-dir "
                "(or MINIVGG_DATA) at a good copy.")


class CorruptDataError(ValueError):
    """A data file is damaged, truncated or not what its name says.

    The message names the file, what is wrong with it and what to do; a ValueError, so
    code that already catches bad values catches this too.
    """


@dataclass(repr=False)
class Dataset:
    """A labelled image data set with a train and a test split.

    train_images: uint8 (N, C, H, W)      train_labels: int64 (N,)
    test_images:  uint8 (M, C, H, W)      test_labels:  int64 (M,)
    classes: the class names, ``classes[label]`` is the name of ``label``
    name: a short identifier such as "cifar10"
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str] = field(default_factory=list)

    def __post_init__(self):
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(f"Dataset {self.name!r}: {split}_images must be uint8 "
                                 f"(N, C, H, W); got {images.dtype} {images.shape}")
            if labels.dtype != np.int64 or labels.shape != (len(images),):
                raise ValueError(f"Dataset {self.name!r}: {split}_labels must be int64 of "
                                 f"shape ({len(images)},); got {labels.dtype} {labels.shape}")
            if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
                raise ValueError(f"Dataset {self.name!r}: {split}_labels must lie in "
                                 f"[0, {len(self.classes)}); got [{labels.min()}, "
                                 f"{labels.max()}]")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(f"Dataset {self.name!r}: train and test images differ in shape: "
                             f"{self.train_images.shape[1:]} vs {self.test_images.shape[1:]}")

    def take(self, limit: int) -> Dataset:
        """The first ``limit`` images of each split (a quick run on a small part).

        A slice would quietly accept 0 or -1 (``images[:-1]`` drops the last image), so
        anything but a positive whole number is refused.
        """
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"Dataset.take: limit must be a whole number >= 1; got "
                             f"{limit!r}")
        return Dataset(name=self.name, classes=list(self.classes),
                       train_images=self.train_images[:limit],
                       train_labels=self.train_labels[:limit],
                       test_images=self.test_images[:limit],
                       test_labels=self.test_labels[:limit])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.train_images.shape[1:])

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (f"Dataset({self.name!r}: {len(self.train_labels)} train / "
                f"{len(self.test_labels)} test images of {c}×{h}×{w}, "
                f"{self.num_classes} classes)")
