"""The batch loader: every sample once per epoch, reproducible order, prefetching."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from minivgg.data import Compose, DataLoader, HorizontalFlip, Normalize, RandomCrop
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


def test_device_option_moves_each_batch_as_uint8(monkeypatch):
    moved = []
    monkeypatch.setattr(loader_module, "to_device", lambda a: moved.append(a.dtype) or a)
    images, labels = numbered(20)
    batches = list(DataLoader(images, labels, batch_size=10, device=True))
    assert moved == [np.uint8, np.int64] * 2            # 1 byte a pixel travels, not 4
    assert all(x.dtype == np.float32 for x, _ in batches)   # converted after the copy


@pytest.mark.parametrize("prefetch", [0, 2])
def test_normalising_on_the_device_equals_normalising_on_the_host(monkeypatch, prefetch):
    moved = []
    monkeypatch.setattr(loader_module, "to_device", lambda a: moved.append(a.dtype) or a)
    images, labels = numbered(50)
    images = images + np.arange(8, dtype=np.uint8)[None, None, None, :] * 9   # not flat
    norm = Normalize.from_data(images)
    augment = [RandomCrop(8, 2), HorizontalFlip()]
    host = DataLoader(images, labels, 16, transform=Compose(augment + [norm]), seed=3)
    device = DataLoader(images, labels, 16, transform=Compose(augment), normalize=norm,
                        seed=3, device=True, prefetch=prefetch)
    for _ in range(2):                                         # two epochs
        pairs = list(zip(host, device))
        assert len(pairs) == 4
        for (xh, yh), (xd, yd) in pairs:
            assert xd.dtype == np.float32
            np.testing.assert_array_equal(xh, xd)          # bit for bit
            np.testing.assert_array_equal(yh, yd)
    assert set(moved) == {np.dtype(np.uint8), np.dtype(np.int64)}


def test_augmentations_are_keyed_by_seed_epoch_and_batch():
    images, labels = numbered(64)
    images = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    flip = Compose([RandomCrop(8, 3), HorizontalFlip()])

    def epochs(loader, n=2):
        return [np.concatenate([x for x, _ in loader]) for _ in range(n)]
    a = epochs(DataLoader(images, labels, 16, shuffle=False, transform=flip, seed=1))
    b = DataLoader(images, labels, 16, shuffle=False, transform=flip, seed=1, prefetch=2)
    b.set_epoch(1)                                           # a resumed run
    np.testing.assert_array_equal(epochs(b, 1)[0], a[1])
    assert not np.array_equal(a[0], a[1])                    # another epoch, other crops
    c = epochs(DataLoader(images, labels, 16, shuffle=False, transform=flip, seed=2), 1)
    assert not np.array_equal(c[0], a[0])                    # another seed, other crops
    first = a[0][:16]                     # batches of one epoch differ: the step is keyed
    assert not all(np.array_equal(first, a[0][i:i + 16]) for i in (16, 32, 48))


def test_prefetched_batches_are_handed_over_with_a_marker_each(monkeypatch):
    marked, waited = [], []
    monkeypatch.setattr(loader_module, "mark_ready", lambda x: marked.append(id(x)) or id(x))
    monkeypatch.setattr(loader_module, "wait_ready", waited.append)
    images, labels = numbered(40)
    xs = [id(x) for x, _ in DataLoader(images, labels, batch_size=10, prefetch=2)]
    assert marked == waited == xs and len(xs) == 4
    assert not [t for t in threading.enumerate() if t.name == "DataLoader-prefetch"]
    from minivgg.kernels.handoff import mark_ready, wait_ready
    assert mark_ready(np.zeros(3)) is None and wait_ready(None) is None    # NumPy: no-ops


def test_bad_inputs_are_named():
    images, labels = numbered(10)
    with pytest.raises(ValueError, match="labels"):
        DataLoader(images, labels[:5])
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(images, labels, batch_size=0)


def test_crops_and_flips_are_applied_after_the_copy(monkeypatch):
    """The loader sends the plain uint8 gather and augments where the batch arrived; a
    transform that is not a device transform still runs before the copy."""
    class Arrived(np.ndarray):
        pass
    seen = []
    monkeypatch.setattr(loader_module, "to_device", lambda a: a.view(Arrived))

    def record(transform):
        def run(x, rng):
            seen.append(type(x))
            return transform(x, rng)
        run.on_device = getattr(transform, "on_device", False)
        return run
    images, labels = numbered(20)
    list(DataLoader(images, labels, 10, device=True,
                    transform=record(Compose([RandomCrop(8, 2), HorizontalFlip()]))))
    assert seen == [Arrived, Arrived]
    seen.clear()
    list(DataLoader(images, labels, 10, device=True,
                    transform=record(Compose([RandomCrop(8, 2), lambda x, rng: x]))))
    assert seen == [np.ndarray, np.ndarray]
