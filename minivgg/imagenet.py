"""ImageNet inputs and outputs for the trained VGG weights.

torchvision's VGG weights were trained on pictures prepared this way (its ``IMAGENET1K_V1``
transforms: Resize(256), CenterCrop(224), ToTensor, Normalize), so a photo must be prepared
exactly so before the network sees it:

    1. resize so that the shorter side is 256 pixels (bilinear, with Pillow's antialiasing;
       the longer side becomes int(256 * long / short), as torchvision computes it)
    2. cut the central 224 x 224 square
    3. scale the 0..255 values to [0, 1]
    4. subtract the mean and divide by the standard deviation of ImageNet's training
       pictures, per channel (R, G, B): mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)

``preprocess(photo)`` returns a float32 (1, 3, 224, 224) NCHW batch. ``class_names()`` are
the 1000 classes in the order of the network's outputs (torchvision's short names), and
``top_k(logits)`` turns a row of logits into the k likeliest (index, name, probability).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np

MEAN = (0.485, 0.456, 0.406)   # torchvision's ImageNet statistics (transforms.Normalize)
STD = (0.229, 0.224, 0.225)
RESIZE = 256
CROP = 224
NUM_CLASSES = 1000


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("minivgg.imagenet needs Pillow to read and resize photos: "
                          "pip install pillow") from None
    return Image


def load_image(image):
    """A PIL RGB image from a path, a PIL image or a uint8 (H, W, 3) array."""
    Image = _pil()
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")              # greyscale, palette, RGBA -> RGB
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"load_image: expected a uint8 (H, W, 3) array, got "
                             f"{image.dtype} {image.shape}")
        return Image.fromarray(image, "RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    raise TypeError(f"load_image: expected a path, a PIL image or a uint8 array, got "
                    f"{type(image).__name__}")


def resize_shorter(image, size: int = RESIZE):
    """Resize a PIL image so its shorter side is ``size`` (torchvision's Resize(int))."""
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)               # torchvision truncates
    new = (size, new_long) if w <= h else (new_long, size)
    return image.resize(new, _pil().BILINEAR)


def center_crop(image, size: int = CROP):
    """The central ``size`` x ``size`` square; offsets rounded as torchvision does."""
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"center_crop: the image is {w}x{h}, smaller than the {size}x{size} "
                         "crop; resize it first")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def normalize(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W): scaled to [0, 1], minus MEAN, over STD."""
    x = pixels.astype(np.float32) / np.float32(255)
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(image, resize: int = RESIZE, crop: int = CROP) -> np.ndarray:
    """A photo (path, PIL image or uint8 (H, W, 3) array) -> float32 (1, 3, crop, crop)."""
    picture = center_crop(resize_shorter(load_image(image), resize), crop)
    return normalize(np.asarray(picture))[None]


def unnormalize(x: np.ndarray) -> np.ndarray:
    """One preprocessed image, (3, H, W) or (1, 3, H, W) -> (H, W, 3) in [0, 1], to show."""
    x = np.asarray(x)
    x = x[0] if x.ndim == 4 else x
    pixels = x.transpose(1, 2, 0) * np.array(STD) + np.array(MEAN)
    return np.clip(pixels, 0.0, 1.0)


@functools.lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    text = resources.files("minivgg").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = tuple(text.splitlines())
    if len(names) != NUM_CLASSES:
        raise RuntimeError(f"class_names: imagenet_classes.txt has {len(names)} lines, "
                           f"expected {NUM_CLASSES}; the package is damaged")
    return names


def class_names() -> list[str]:
    """The 1000 ImageNet classes in output order ("tench", "goldfish", ..., "toilet tissue")."""
    return list(_names())


def softmax(logits: np.ndarray) -> np.ndarray:
    """exp(z_i) / sum_j exp(z_j) in float64, computed as exp(z_i - max z) / sum_j exp(z_j -
    max z): the same value, but no exp overflows (the largest term is exp(0) = 1)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits, k: int = 5, names=None) -> list[tuple[int, str, float]]:
    """The ``k`` likeliest classes of one image as (index, name, probability), best first.

    ``logits`` is (C,) or (1, C), a NumPy or CuPy array; ``names`` defaults to
    class_names() when C is 1000 (else the index as text).
    """
    from minivgg.backend import asnumpy
    z = asnumpy(logits)
    if z.ndim == 2 and z.shape[0] == 1:
        z = z[0]
    if z.ndim != 1:
        raise ValueError(f"top_k: expected the logits of one image, (C,) or (1, C), got shape "
                         f"{z.shape}; call it once per row")
    if names is None:
        names = _names() if z.size == NUM_CLASSES else [str(i) for i in range(z.size)]
    if len(names) != z.size:
        raise ValueError(f"top_k: {len(names)} names for {z.size} logits")
    if not 1 <= k <= z.size:
        raise ValueError(f"top_k: k must be between 1 and {z.size}, got {k}")
    p = softmax(z)
    order = np.argsort(-p, kind="stable")[:k]         # ties: the lower index first
    return [(int(i), names[i], float(p[i])) for i in order]
