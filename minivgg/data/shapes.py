"""A synthetic data set made on the spot: ten kinds of coloured shapes on noisy backgrounds.

It needs no download and no disk, so a lesson, a demo or a test runs anywhere in seconds.
It is learnable but not trivial: each shape varies in size, position, aspect, rotation and
colour, sits on a random gradient with stripes and noise, and the shape and background
colours are drawn independently of the class, so only the *form* tells the classes apart.

Everything is vectorised: every image gets a grid of coordinates relative to its own shape
(centre, size, rotation), and each class is a boolean formula on those coordinates.
"""

from __future__ import annotations

import numpy as np

from minivgg.data.dataset import Dataset

SHAPE_CLASSES = ["circle", "ring", "square", "frame", "diamond", "triangle", "plus", "cross",
                 "crescent", "dots"]
SIZE = 32


def _masks(label, u, v):
    """Inside-the-shape masks, (n, H, W) booleans, for images of one class.

    (u, v) are coordinates in units of the shape's radius: (0, 0) is its centre and the
    shape roughly fills the square |u|, |v| <= 1 (v grows downwards, like image rows).
    """
    radius = np.sqrt(u * u + v * v)
    box = np.maximum(np.abs(u), np.abs(v))
    name = SHAPE_CLASSES[label]
    if name == "circle":
        return radius <= 1.0
    if name == "ring":
        return (radius <= 1.0) & (radius >= 0.55)
    if name == "square":
        return box <= 0.85
    if name == "frame":
        return (box <= 0.9) & (box >= 0.55)
    if name == "diamond":
        return np.abs(u) + np.abs(v) <= 1.1
    if name == "triangle":  # apex on top: the half-width grows from 0 at v=-0.9 to 1 at v=0.9
        return (v >= -0.9) & (v <= 0.9) & (np.abs(u) <= (v + 0.9) / 1.8)
    if name == "plus":
        return (box <= 1.0) & ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3))
    if name == "cross":  # the plus turned by 45 degrees
        a, b = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)
        return (np.maximum(np.abs(a), np.abs(b)) <= 1.1) & ((np.abs(a) <= 0.3) | (np.abs(b) <= 0.3))
    if name == "crescent":  # a disc with a bite taken out of its right side
        return (radius <= 1.0) & ((u - 0.45) ** 2 + v * v >= 0.75 ** 2)
    if name == "dots":  # four small discs on the corners of a square
        return (np.abs(u) - 0.5) ** 2 + (np.abs(v) - 0.5) ** 2 <= 0.33 ** 2
    raise ValueError(f"unknown shape class {label}")


def _render(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n images, uint8 (n, 3, 32, 32), and their int64 labels."""
    labels = rng.integers(0, len(SHAPE_CLASSES), size=n)
    col = np.arange(SIZE, dtype=np.float32)[None, None, :]   # x, broadcast over rows
    row = np.arange(SIZE, dtype=np.float32)[None, :, None]   # y, broadcast over columns

    # Background: a linear gradient between two random colours, plus stripes and noise.
    c0, c1 = rng.uniform(0, 255, (2, n, 3, 1, 1)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    t = ((np.cos(angle) * (col - 15.5) + np.sin(angle) * (row - 15.5)) / 44 + 0.5)[:, None]
    background = c0 + (c1 - c0) * t
    freq = rng.uniform(0.3, 1.2, (n, 1, 1)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    stripes = np.sin(freq * (np.sin(angle) * col - np.cos(angle) * row) + phase)
    background += rng.uniform(0, 30, (n, 1, 1, 1)).astype(np.float32) * stripes[:, None]

    # Shape geometry: centre, radius, aspect and a small rotation, drawn per image.
    radius = rng.uniform(6.0, 12.0, (n, 1, 1)).astype(np.float32)
    cx, cy = rng.uniform(radius - 2, SIZE - 1 - radius + 2, (2, n, 1, 1)).astype(np.float32)
    aspect = rng.uniform(0.8, 1.25, (n, 1, 1)).astype(np.float32)
    theta = rng.uniform(-0.3, 0.3, (n, 1, 1)).astype(np.float32)
    dx, dy = (col - cx) / (radius * aspect), (row - cy) / (radius / aspect)
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    inside = np.zeros((n, SIZE, SIZE), dtype=bool)
    for label in range(len(SHAPE_CLASSES)):  # ten vectorised formulas, not n drawings
        idx = np.flatnonzero(labels == label)
        inside[idx] = _masks(label, u[idx], v[idx])

    # Shape colour: random, pushed away from the mean background colour so it stays visible.
    mean_bg = background.mean(axis=(2, 3), keepdims=True)
    direction = rng.normal(size=(n, 3, 1, 1)).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    shade = rng.uniform(0.8, 1.0, (n, 1, 1, 1)).astype(np.float32)
    colour = mean_bg + direction * rng.uniform(90, 160, (n, 1, 1, 1)).astype(np.float32)
    colour = np.where(np.abs(colour - 127.5) > 127.5, 255 - colour, colour)  # fold into range
    colour = colour * shade + (col + row) * 0.6  # a little shading across the shape

    images = np.where(inside[:, None], colour, background)
    images += 12 * rng.standard_normal(images.shape, dtype=np.float32)
    return np.clip(images, 0, 255).round().astype(np.uint8), labels.astype(np.int64)


def make_shapes(n_train: int = 10_000, n_test: int = 2_000, seed: int = 0) -> Dataset:
    """The synthetic "shapes" data set: uint8 (N, 3, 32, 32) images of 10 classes.

    Deterministic for a seed. The train and test splits come from independent streams of
    the same seed, so changing ``n_train`` leaves the test set unchanged.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"make_shapes: sizes must be >= 0; got n_train={n_train}, "
                         f"n_test={n_test}")
    train_rng, test_rng = (np.random.default_rng(s)
                           for s in np.random.SeedSequence(seed).spawn(2))
    train_images, train_labels = _render(n_train, train_rng)
    test_images, test_labels = _render(n_test, test_rng)
    return Dataset("shapes", train_images, train_labels, test_images, test_labels,
                   list(SHAPE_CLASSES))
