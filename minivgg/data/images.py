"""Reading one picture (a photo for ``minivgg predict``) safely, and fitting it to a model.

    img = read_image("cat.jpg", target=32)     # uint8 (C, H, W), C = 1 or 3
    x = prepare_image(img, channels=3, size=32)  # uint8 (3, 32, 32)

A small file can describe a huge picture: a 445 KB PNG of 12000×12000 pixels decodes to
432 MB, and a reader that converts to float (matplotlib's ``imread``) needed 5.1 GB for it.
So the size is read from the header first (Pillow's ``Image.open`` parses only the header;
pixels are decoded by ``load``), a picture above ``max_pixels`` is refused before it is
decoded, and with ``target`` a JPEG is decoded at 1/2, 1/4 or 1/8 scale straight from its
DCT coefficients (``Image.draft``) and any picture is then box-reduced, so its shorter side
is at most a few times what the model needs.

Only raster formats Pillow decodes itself are opened: EPS, for one, would start Ghostscript.
Every failure raises ImageError (a ValueError) naming the file, what is wrong and what to do.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from minivgg.data.transforms import resize_bilinear

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
MAX_PIXELS = 50_000_000  # 50 megapixels: 150 MB as RGB, and a phone photo fits
OVERSAMPLE = 4           # with ``target``, keep the shorter side within [4, 8) x target
GRAY_MODES = ("1", "L", "LA", "La")
WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # 16-bit PNGs open as these


class ImageError(ValueError):
    """A picture file cannot be used: missing, not an image, damaged, or too large."""


def read_image(path, max_pixels: int = MAX_PIXELS, target: int | None = None) -> np.ndarray:
    """A PNG, JPEG, BMP, GIF (first frame) or WebP file -> uint8 (C, H, W), C = 1 or 3.

    Grey pictures give one channel, all others three (alpha is dropped, a palette is
    expanded, 16-bit grey is scaled to 8 bits). ``target``: the side the picture will be
    resized to; a larger picture is shrunk while it is decoded, so its shorter side stays
    below 8 × target. ``max_pixels``: the most pixels decoded (after that shrinking).
    """
    path = Path(path)
    with _open(path) as im:
        if target is not None:
            if target < 1:
                raise ValueError(f"read_image: target must be >= 1; got {target}")
            im.draft(im.mode, (OVERSAMPLE * target, OVERSAMPLE * target))  # JPEG only
        _check_size(path, im.size, max_pixels)
        try:
            im.load()
        except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError...
            raise ImageError(f"{path} is damaged or truncated: the pixels cannot be decoded "
                             f"({exc}); use another copy of the picture") from None
        im = _to_8bit(im)
    if target is not None:
        im = _reduce(im, target)
    array = np.asarray(im)
    array = array[:, :, None] if array.ndim == 2 else array
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _open(path: Path) -> Image.Image:
    """Image.open, which parses only the header, with every failure named."""
    try:
        with warnings.catch_warnings():  # our own max_pixels check follows
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path, formats=list(FORMATS))
    except OSError as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise ImageError(f"{path} is not a picture this reader opens (or its header is "
                             f"damaged): expected one of {', '.join(FORMATS)}; convert it to "
                             "PNG or JPEG") from None
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path} is too large to decode ({exc}); shrink it first") from None
    except Exception as exc:  # a damaged header in one of Pillow's plugins
        raise ImageError(f"{path} has a damaged header ({exc}); use another copy of the "
                         "picture") from None


def _check_size(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{path}: its header says {width}×{height} pixels; an image has at "
                         "least one")
    if width * height > max_pixels:
        raise ImageError(f"{path} is {width}×{height} = {width * height:,} pixels, more than "
                         f"the {max_pixels:,} read_image decodes; shrink it first, or pass "
                         "a larger max_pixels (or target, for a JPEG)")


def _to_8bit(im: Image.Image) -> Image.Image:
    """Grey modes -> "L", 16-bit grey scaled (not clipped, as convert("L") would) -> "L",
    everything else -> "RGB" (palette expanded, alpha dropped, CMYK converted)."""
    if im.mode in WIDE_GRAY_MODES:
        values = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257), 0, 255).astype(np.uint8))
    return im.convert("L" if im.mode in GRAY_MODES else "RGB")


def _reduce(im: Image.Image, target: int) -> Image.Image:
    """Box-reduce by a whole factor so the shorter side lies in [4, 8) × target."""
    factor = min(im.size) // (OVERSAMPLE * target)
    return im.reduce(factor) if factor >= 2 else im


def prepare_image(img: np.ndarray, channels: int, size: int) -> np.ndarray:
    """uint8 (C, H, W) -> uint8 (channels, size, size): colour converted, resized.

    Grey from colour is the mean of the channels; colour from grey repeats it. A picture
    more than twice the size is first averaged over whole blocks, so shrinking a photo
    does not alias (bilinear alone samples only 4 input pixels per output pixel).
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[0] not in (1, 3) or channels not in (1, 3) or size < 1:
        raise ValueError(f"prepare_image: need an image (1 or 3, H, W), channels 1 or 3 and "
                         f"size >= 1; got shape {img.shape}, channels {channels}, size {size}")
    if img.shape[0] != channels:
        img = (img.mean(axis=0, keepdims=True) if channels == 1 else
               np.repeat(img[:1], channels, axis=0))
    img = _block_mean(img.astype(np.float32), size)
    if img.shape[1:] != (size, size):
        img = resize_bilinear(img[None], size, size)[0]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _block_mean(img: np.ndarray, size: int) -> np.ndarray:
    """Average (C, H, W) over fy × fx blocks, fy = H // size (and the same for W), when a
    factor is at least 2; the few rows and columns left over at the edge are dropped."""
    _, h, w = img.shape
    fy, fx = max(h // size, 1), max(w // size, 1)
    if fy < 2 and fx < 2:
        return img
    c, oh, ow = img.shape[0], h // fy, w // fx
    return img[:, :oh * fy, :ow * fx].reshape(c, oh, fy, ow, fx).mean(axis=(2, 4))
