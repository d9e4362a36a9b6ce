"""Data augmentation and normalisation, applied to a whole batch at once.

Every transform takes an NCHW batch and a generator -- a ``numpy.random.Generator``, or the
loader's ``minivgg.keyed_random.KeyedRandom`` (the same method names: ``random``,
``integers``, ``normal``) -- and returns a batch of the same shape and dtype (uint8 in,
uint8 out; float in, float out) — except ``Normalize``, which turns pixels into float32
standard scores, on whichever device the batch is (the loader applies it after the copy).
Randomness comes only from the generator passed in, so a seeded loader reproduces an epoch
exactly.

RandomCrop and HorizontalFlip (and a Compose of only them and Normalize) are *device
transforms* (``on_device = True``): written with the array module of the batch, they run
where the batch is. The loader then applies them after the copy, so on the GPU a uint8
batch travels as it is, and the crop offsets and flip choices are drawn there by the keyed
generator (the same bits as on the CPU): nothing but the images crosses from the host.

    RandomCrop(32, padding=4)          shift by up to 4 pixels (pad, then crop)
    HorizontalFlip()                   mirror half of the images
    ScaleJitter(32, (32, 40))          VGG's training-scale jitter: rescale, then crop
    PCALighting.from_data(images)      AlexNet's RGB colour shift along the principal axes
    Normalize.from_data(images)        per-channel (x - mean) / std
    Compose([...])                     apply several in order
"""

from __future__ import annotations

import numpy as np

from minivgg.backend import get_array_module


def _as_dtype(x: np.ndarray, dtype) -> np.ndarray:
    """Cast float results back to ``dtype``, rounding and clipping for integer images."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype, copy=False)


def _rounded(values, digits: int = 3) -> list[float]:
    return [round(float(v), digits) for v in values]


def _check_batch(name: str, x: np.ndarray) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name}: expected an NCHW batch (4 dimensions); got shape {x.shape}")


def _draw(rng, method: str, *args, xp=np):
    """``rng.method(*args)`` computed in ``xp``: a KeyedRandom draws in any array module; a
    NumPy Generator draws on the host (and its draws are copied where the batch is)."""
    if xp is np:
        return getattr(rng, method)(*args)
    if hasattr(rng, "keep_mask"):                     # a KeyedRandom: draw on the device
        return getattr(rng, method)(*args, xp=xp)
    return xp.asarray(getattr(rng, method)(*args))


def random_crops(x, size: int, rng):
    """One random size×size window of each image of ``x`` (N, C, H, W) -> (N, C, size, size).

    ``as_strided`` lists every window without copying -- shape (N, C, H', W', size, size),
    window (a, b) of an image starting at its pixel (a, b) -- so picking window
    (top[i], left[i]) of image i is a single fancy-indexing gather.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    top = _draw(rng, "integers", 0, h - size + 1, n, xp=xp)
    left = _draw(rng, "integers", 0, w - size + 1, n, xp=xp)
    x = xp.ascontiguousarray(x)
    sn, sc, sh, sw = x.strides
    windows = xp.lib.stride_tricks.as_strided(
        x, (n, c, h - size + 1, w - size + 1, size, size), (sn, sc, sh, sw, sh, sw))
    return windows[xp.arange(n), :, top, left]


class RandomCrop:
    """Pad each side by ``padding`` pixels, then crop a random ``size``×``size`` window."""

    on_device = True

    def __init__(self, size: int = 32, padding: int = 4, mode: str = "constant"):
        self.size, self.padding, self.mode = size, padding, mode

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_batch("RandomCrop", x)
        p = self.padding
        padded = get_array_module(x).pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode=self.mode)
        if padded.shape[2] < self.size or padded.shape[3] < self.size:
            raise ValueError(f"RandomCrop: images of {x.shape[2:]} padded by {p} are smaller "
                             f"than the crop size {self.size}")
        return random_crops(padded, self.size, rng)

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding}, mode={self.mode!r})"


class HorizontalFlip:
    """Mirror each image left-right with probability ``p``.

    ``where`` picks each image from the batch or its mirror: no boolean indexing, whose
    result size the GPU would have to report back to the host.
    """

    on_device = True

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_batch("HorizontalFlip", x)
        xp = get_array_module(x)
        flip = _draw(rng, "random", len(x), xp=xp) < self.p
        return xp.where(flip[:, None, None, None], x[..., ::-1], x)

    def __repr__(self):
        return f"HorizontalFlip(p={self.p})"


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a batch (N, C, H, W) -> float32 (N, C, height, width).

    Pixel centres are aligned (like ``align_corners=False`` in other libraries): output
    pixel j samples the input at (j + 0.5) * H / height - 0.5.
    """
    def weights(n_in, n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, wy = weights(x.shape[2], height)
    x0, x1, wx = weights(x.shape[3], width)
    x = x.astype(np.float32, copy=False)
    rows = x[:, :, y0] * (1 - wy)[:, None] + x[:, :, y1] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


class ScaleJitter:
    """The VGG paper's scale jittering: rescale each image so its side is a random S in
    ``scale`` (inclusive), then crop a random ``size``×``size`` window.

    The paper used S in [256, 512] and 224 crops; for 32×32 images (32, 40) is the analogue.
    Images that draw the same S are resized together, so the loop runs over the few
    distinct scales, not over the images.
    """

    def __init__(self, size: int = 32, scale: tuple[int, int] = (32, 40)):
        if scale[0] < size or scale[1] < scale[0]:
            raise ValueError(f"ScaleJitter: need size <= scale[0] <= scale[1]; got size={size},"
                             f" scale={scale}")
        self.size, self.scale = size, tuple(scale)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_batch("ScaleJitter", x)
        n, c = x.shape[:2]
        sides = rng.integers(self.scale[0], self.scale[1] + 1, n)
        out = np.empty((n, c, self.size, self.size), dtype=x.dtype)
        for side in np.unique(sides):
            idx = np.flatnonzero(sides == side)
            rescaled = _as_dtype(resize_bilinear(x[idx], side, side), x.dtype)
            out[idx] = random_crops(rescaled, self.size, rng)
        return out

    def __repr__(self):
        return f"ScaleJitter(size={self.size}, scale={self.scale})"


class PCALighting:
    """AlexNet's colour augmentation: add to every pixel of an image the same RGB shift
    ``eigvecs @ (alpha * eigvals)``, with alpha ~ N(0, std²) drawn per image.

    eigvals/eigvecs are the principal components of the training pixels' RGB covariance,
    measured on the [0, 1] scale as in the paper; the shift is scaled back to pixel units.
    """

    def __init__(self, eigvals, eigvecs, std: float = 0.1):
        self.eigvals = np.asarray(eigvals, dtype=np.float32)      # (3,)
        self.eigvecs = np.asarray(eigvecs, dtype=np.float32)      # (3, 3), one per column
        self.std = std

    @classmethod
    def from_data(cls, images: np.ndarray, std: float = 0.1, max_pixels: int = 1_000_000,
                  seed: int = 0) -> PCALighting:
        """Principal components of the RGB values of uint8 ``images`` (N, 3, H, W)."""
        pixels = images.transpose(1, 0, 2, 3).reshape(images.shape[1], -1)   # (3, N·H·W)
        if pixels.shape[1] > max_pixels:  # a random million pixels estimate it well enough
            pick = np.random.default_rng(seed).choice(pixels.shape[1], max_pixels, replace=False)
            pixels = pixels[:, pick]
        eigvals, eigvecs = np.linalg.eigh(np.cov(pixels.astype(np.float64) / 255.0))
        return cls(eigvals, eigvecs, std)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check_batch("PCALighting", x)
        alpha = rng.normal(0.0, self.std, (len(x), len(self.eigvals))).astype(np.float32)
        shift = (alpha * self.eigvals) @ self.eigvecs.T                    # (N, 3), [0, 1]
        scale = 255.0 if np.issubdtype(x.dtype, np.integer) else 1.0
        return _as_dtype(x + scale * shift[:, :, None, None], x.dtype)

    def state_dict(self) -> dict:
        return {"eigvals": self.eigvals.tolist(), "eigvecs": self.eigvecs.tolist(),
                "std": self.std}

    def __repr__(self):
        return f"PCALighting(eigvals={_rounded(self.eigvals, 5)}, std={self.std})"


class Normalize:
    """Per-channel standardisation ``(x - mean) / std``, returning float32.

    mean and std are measured on the *training* images (in pixel units, 0-255 for uint8)
    and reused unchanged for the test images; ``state_dict()`` gives them as plain lists so
    a checkpoint can store them and ``Normalize(**state)`` restores them.
    """

    on_device = True

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if self.mean.shape != self.std.shape or self.mean.ndim != 1 or (self.std <= 0).any():
            raise ValueError(f"Normalize: need mean and std of shape (C,) with std > 0; got "
                             f"mean {self.mean.shape}, std {self.std.tolist()}")

    @classmethod
    def from_data(cls, images: np.ndarray) -> Normalize:
        """Statistics of ``images`` (N, C, H, W), one channel at a time (in float64)."""
        mean = [images[:, c].mean(dtype=np.float64) for c in range(images.shape[1])]
        std = [images[:, c].std(dtype=np.float64) for c in range(images.shape[1])]
        return cls(mean, std)

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        _check_batch("Normalize", x)
        if x.shape[1] != len(self.mean):
            raise ValueError(f"Normalize: statistics are for {len(self.mean)} channels; got "
                             f"a batch of shape {x.shape}")
        xp = get_array_module(x)                     # on the device the batch lives on
        mean = xp.asarray(self.mean[:, None, None])
        scale = xp.asarray((1.0 / self.std)[:, None, None])
        return (x.astype(np.float32) - mean) * scale

    def state_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def __repr__(self):
        return f"Normalize(mean={_rounded(self.mean)}, std={_rounded(self.std)})"


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    @property
    def on_device(self) -> bool:
        """A device transform if every one of its steps is."""
        return all(getattr(t, "on_device", False) for t in self.transforms)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for transform in self.transforms:
            x = transform(x, rng)
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"
