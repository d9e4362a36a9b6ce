"""The synthetic shapes data set: shapes, determinism, and that colour gives nothing away."""

from __future__ import annotations

import numpy as np

from minivgg.data import load_dataset, make_shapes
from minivgg.data.shapes import SHAPE_CLASSES


def test_shapes_have_the_dataset_layout():
    ds = make_shapes(200, 50, seed=0)
    assert ds.name == "shapes" and ds.classes == SHAPE_CLASSES and len(ds.classes) == 10
    assert ds.train_images.shape == (200, 3, 32, 32) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (50, 3, 32, 32)
    assert ds.train_labels.dtype == np.int64
    assert set(ds.train_labels.tolist()) == set(range(10))


def test_same_seed_same_images_other_seed_other_images():
    a, b, c = make_shapes(64, 16, seed=3), make_shapes(64, 16, seed=3), make_shapes(64, 16, 4)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    assert not np.array_equal(a.train_images, c.train_images)


def test_test_split_does_not_depend_on_train_size():
    small, large = make_shapes(10, 20, seed=1), make_shapes(100, 20, seed=1)
    np.testing.assert_array_equal(small.test_images, large.test_images)


def test_images_use_the_whole_range_and_vary():
    ds = make_shapes(100, 0, seed=0)
    assert ds.train_images.min() < 20 and ds.train_images.max() > 235
    assert ds.train_images.reshape(100, -1).std(axis=1).min() > 5  # no blank images


def test_mean_colour_does_not_give_the_class_away():
    """A nearest-class-mean classifier on average RGB stays near chance (10 %)."""
    ds = make_shapes(2000, 1000, seed=0)
    features = [d.reshape(len(d), 3, -1).mean(axis=2) for d in (ds.train_images, ds.test_images)]
    centres = np.stack([features[0][ds.train_labels == k].mean(axis=0) for k in range(10)])
    distances = ((features[1][:, None, :] - centres[None]) ** 2).sum(axis=2)
    accuracy = (distances.argmin(axis=1) == ds.test_labels).mean()
    assert accuracy < 0.25


def test_load_dataset_makes_shapes():
    ds = load_dataset("shapes", n_train=20, n_test=10, seed=0)
    assert len(ds.train_labels) == 20 and len(ds.test_labels) == 10
