"""The batch loader: every sample once per epoch, reproducible order, prefetching."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from minivgg.data import Compose, DataLoader, HorizontalFlip, RandomCrop
from minivgg.data import loader as loader_module


def numbered(n: int = 103):
    """Images whose every pixel holds the sample's own index (mod 256), labels = index."""
    ids = np.arange(n)
    images = np.broadcast_to((ids % 256).astype(np.uint8)[:, None, None, None],
                             (n, 3, 8, 8)).copy()
    return images, ids


def epoch_labels(loader) -> list[np.ndarray]:
    return [y for _, y in loader]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_every_sample_exactly_once_per_epoch(prefetch):
    images, labels = numbered()
    loader = DataLoader(images, labels, batch_size=10, seed=0, prefetch=prefetch)
    for _ in range(3):
        seen = []
        for x, y in loader:
            assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape[1:] == (3, 8, 8)
            np.testing.assert_allclose(x[:, 0, 0, 0] * 255, y % 256, atol=1e-4)  # rows agree
            seen.extend(y.tolist())
        assert sorted(seen) == list(range(103))


def test_length_and_the_last_short_batch():
    images, labels = numbered(103)
    keep = DataLoader(images, labels, batch_size=10, drop_last=False)
    drop = DataLoader(images, labels, batch_size=10, drop_last=True)
    assert len(keep) == 11 and [len(y) for y in epoch_labels(keep)][-1] == 3
    assert len(drop) == 10 and all(len(y) == 10 for y in epoch_labels(drop))


def test_order_changes_each_epoch_and_repeats_for_the_same_seed():
    images, labels = numbered()
    a = DataLoader(images, labels, batch_size=16, seed=5)
    first, second = np.concatenate(epoch_labels(a)), np.concatenate(epoch_labels(a))
    assert not np.array_equal(first, second)
    b = DataLoader(images, labels, batch_size=16, seed=5)
    np.testing.assert_array_equal(np.concatenate(epoch_labels(b)), first)
    b.set_epoch(1)  # a resumed run jumps straight to epoch 1
    np.testing.assert_array_equal(np.concatenate(epoch_labels(b)), second)
    c = DataLoader(images, labels, batch_size=16, seed=6)
    assert not np.array_equal(np.concatenate(epoch_labels(c)), first)


def test_without_shuffle_the_order_is_the_data_order():
    images, labels = numbered(25)
    loader = DataLoader(images, labels, batch_size=10, shuffle=False)
    assert np.concatenate(epoch_labels(loader)).tolist() == list(range(25))


def test_augmented_batches_are_reproducible_and_prefetch_changes_nothing():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 50)
    transform = Compose([RandomCrop(32, 4), HorizontalFlip()])
    runs = [list(DataLoader(images, labels, batch_size=8, transform=transform, seed=1,
                            prefetch=p)) for p in (0, 0, 3)]
    for other in runs[1:]:
        for (xa, ya), (xb, yb) in zip(runs[0], other, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    assert 0.0 <= runs[0][0][0].min() and runs[0][0][0].max() <= 1.0


def test_breaking_out_early_stops_the_prefetch_thread():
    images, labels = numbered(1000)
    loader = DataLoader(images, labels, batch_size=10, prefetch=2)
    batches = iter(loader)
    next(batches)
    batches.close()  # what a `break` in a for loop does to a generator
    assert not any(t.name == "DataLoader-prefetch" for t in threading.enumerate())


def test_errors_in_the_prefetch_thread_reach_the_caller():
    def broken(x, rng):
        raise RuntimeError("transform failed")

    images, labels = numbered(40)
    with pytest.raises(RuntimeError, match="transform failed"):
        list(DataLoader(images, labels, batch_size=10, transform=broken, prefetch=2))


def test_device_option_moves_each_batch(monkeypatch):
    moved = []
    monkeypatch.setattr(loader_module, "to_device", lambda a: moved.append(a.dtype) or a)
    images, labels = numbered(20)
    list(DataLoader(images, labels, batch_size=10, device=True))
    assert moved == [np.float32, np.int64] * 2


def test_bad_inputs_are_named():
    images, labels = numbered(10)
    with pytest.raises(ValueError, match="labels"):
        DataLoader(images, labels[:5])
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(images, labels, batch_size=0)
