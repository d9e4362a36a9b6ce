"""Batch transforms: shapes and dtypes kept, seeded reproducibility, and what each one does."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from minivgg.data import (
    Compose,
    HorizontalFlip,
    Normalize,
    PCALighting,
    RandomCrop,
    ScaleJitter,
)
from minivgg.data.transforms import resize_bilinear


@pytest.fixture
def batch():
    return np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)


def augmentations(images):
    return [RandomCrop(32, 4), HorizontalFlip(), ScaleJitter(32, (32, 40)),
            PCALighting.from_data(images), Compose([RandomCrop(32, 4), HorizontalFlip()])]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_augmentations_keep_shape_and_dtype_and_repeat_for_a_seed(batch, dtype):
    x = batch.astype(dtype)
    for transform in augmentations(batch):
        a = transform(x, np.random.default_rng(7))
        b = transform(x, np.random.default_rng(7))
        assert a.shape == x.shape and a.dtype == x.dtype, transform
        np.testing.assert_array_equal(a, b)
        c = transform(x, np.random.default_rng(8))
        assert not np.array_equal(a, c), f"{transform} ignores its generator"


def test_random_crop_takes_a_window_of_the_padded_image(batch):
    out = RandomCrop(32, padding=4)(batch, np.random.default_rng(1))
    padded = np.pad(batch, ((0, 0), (0, 0), (4, 4), (4, 4)))
    windows = sliding_window_view(padded, (32, 32), axis=(2, 3))  # (N, C, 9, 9, 32, 32)
    for i in range(len(batch)):
        hits = (windows[i] == out[i][:, None, None]).all(axis=(0, 3, 4))
        assert hits.any(), f"crop {i} is not a window of its padded image"
    assert not np.array_equal(out, batch)


def test_random_crop_without_padding_is_the_identity(batch):
    np.testing.assert_array_equal(RandomCrop(32, 0)(batch, np.random.default_rng(0)), batch)


def test_flip_mirrors_exactly_the_chosen_images(batch):
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(HorizontalFlip(p=1.0)(batch, rng), batch[..., ::-1])
    np.testing.assert_array_equal(HorizontalFlip(p=0.0)(batch, rng), batch)
    out = HorizontalFlip(p=0.5)(batch, rng)
    flipped = (out == batch[..., ::-1]).all(axis=(1, 2, 3))
    kept = (out == batch).all(axis=(1, 2, 3))
    assert (flipped | kept).all() and flipped.any() and kept.any()


def test_resize_bilinear_is_exact_on_identity_and_constants(batch):
    np.testing.assert_array_equal(resize_bilinear(batch, 32, 32), batch.astype(np.float32))
    constant = np.full((2, 3, 8, 8), 100, np.uint8)
    np.testing.assert_allclose(resize_bilinear(constant, 13, 11), 100.0, rtol=1e-6)


def test_scale_jitter_at_the_original_scale_is_the_identity(batch):
    out = ScaleJitter(32, (32, 32))(batch, np.random.default_rng(0))
    np.testing.assert_array_equal(out, batch)


def test_scale_jitter_rejects_a_scale_smaller_than_the_crop():
    with pytest.raises(ValueError, match="scale"):
        ScaleJitter(32, (24, 40))


def test_pca_lighting_adds_one_colour_per_image(batch):
    x = batch.astype(np.float32) / 255.0
    lighting = PCALighting.from_data(batch, std=0.5)
    shift = lighting(x, np.random.default_rng(0)) - x
    np.testing.assert_allclose(shift, shift[:, :, :1, :1] * np.ones_like(shift), atol=1e-6)
    np.testing.assert_allclose(lighting.eigvecs.T @ lighting.eigvecs, np.eye(3), atol=1e-5)


def test_normalize_standardises_each_channel_and_saves_as_plain_lists(batch):
    norm = Normalize.from_data(batch)
    y = norm(batch)
    assert y.dtype == np.float32 and y.shape == batch.shape
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    state = json.loads(json.dumps(norm.state_dict()))
    np.testing.assert_array_equal(Normalize(**state)(batch), y)


def test_normalize_names_a_channel_mismatch(batch):
    with pytest.raises(ValueError, match="3 channels"):
        Normalize.from_data(batch)(batch[:, :1])


def test_compose_applies_in_order(batch):
    rng = np.random.default_rng(0)
    both = Compose([HorizontalFlip(p=1.0), Normalize([0, 0, 0], [255, 255, 255])])(batch, rng)
    np.testing.assert_allclose(both, batch[..., ::-1] / 255.0, rtol=1e-6)


def test_crops_and_flips_run_on_the_device_with_the_same_bits(monkeypatch, batch):
    """On a (fake) CuPy batch, crop offsets and flip choices are drawn by the keyed
    generator in CuPy -- nothing is copied from the host -- and the result is the same
    images as on the CPU."""
    from minivgg.keyed_random import KeyedRandom
    from tests import fake_cupy
    cupy = fake_cupy.install(monkeypatch)
    augment = Compose([RandomCrop(32, 4), HorizontalFlip()])
    assert augment.on_device and not Compose([ScaleJitter(32, (32, 40))]).on_device
    on_host = augment(batch, KeyedRandom(5).at(1, 2))
    x = cupy.asarray(batch)

    def no_copies(*args, **kwargs):
        raise AssertionError("a host array was copied to the device during augmentation")
    monkeypatch.setattr(cupy, "asarray", no_copies)
    on_device = augment(x, KeyedRandom(5).at(1, 2))
    assert isinstance(on_device, cupy.ndarray) and on_device.dtype == np.uint8
    np.testing.assert_array_equal(on_device.view(np.ndarray), on_host)
    assert not np.array_equal(on_host, batch)


def test_a_numpy_generator_still_drives_a_device_transform(monkeypatch, batch):
    """A NumPy Generator draws on the host; its draws go to the device with the batch."""
    from tests import fake_cupy
    cupy = fake_cupy.install(monkeypatch)
    augment = Compose([RandomCrop(32, 4), HorizontalFlip()])
    on_device = augment(cupy.asarray(batch), np.random.default_rng(3))
    np.testing.assert_array_equal(on_device.view(np.ndarray),
                                  augment(batch, np.random.default_rng(3)))


@pytest.mark.gpu
def test_crops_and_flips_on_a_real_gpu_equal_the_cpu(batch):
    import cupy

    from minivgg.keyed_random import KeyedRandom
    augment = Compose([RandomCrop(32, 4), HorizontalFlip()])
    on_device = augment(cupy.asarray(batch), KeyedRandom(5).at(1, 2))
    assert isinstance(on_device, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(on_device), augment(batch, KeyedRandom(5).at(1, 2)))
