"""Mini-batches for training: shuffled, augmented, sent to the device as uint8, normalised there.

A batch is gathered with one fancy-indexing copy (``images[indices]``) and transformed as a
whole, so no Python loop runs per sample. Batches are float32 NCHW images and int64 labels.

The way of a batch: gather on the host, in the images' own dtype (uint8 for every data set
here); copy to the device (``device=True``) -- 1 byte a pixel, not 4; there crop and flip
(device transforms: ``on_device`` in transforms.py; any other transform runs on the host
before the copy), convert to float32 and normalise (``normalize``, a Normalize: per-channel
standard scores; without it a uint8 batch is scaled to [0, 1]). A ``transform`` that
normalises itself returns float32, and on the host the float32 batch is what travels.

Reproducibility: epoch ``e`` draws its order from a generator seeded by ``(seed, e)``;
batch ``b`` draws its augmentations from a KeyedRandom at position (e, b) of the loader's own
stream of ``seed``: a counter-based generator (minivgg.keyed_random) whose draws are a pure
function of (seed, e, b), the same crops in any thread, after any resume. Iterating again
moves to the next epoch by itself; ``set_epoch(e)`` jumps to epoch ``e``, which is how a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from minivgg.backend import to_device
from minivgg.kernels.handoff import mark_ready, wait_ready
from minivgg.keyed_random import KeyedRandom, derive_key

AUGMENT_STREAM = 0x617567            # "aug": the loader's keyed stream, apart from dropout's


class DataLoader:
    """Iterate over (images, labels) in mini-batches.

    images:    uint8 or float array (N, C, H, W); labels: integer array (N,) of class
               indices >= 0 (and < ``num_classes`` when that is given), checked once here
               for the whole data set (``label_range``), not in every batch. Float labels
               are refused, not rounded: 1.7 is not a class
    transform: called as ``transform(batch, rng)`` on each batch (see transforms.py);
               ``rng`` is the batch's KeyedRandom. On the device after the copy if the
               transform says ``on_device`` (crops, flips), else on the host before it
    normalize: a Normalize applied after the batch reached the device (float32 out);
               without it a uint8 batch is scaled to [0, 1], a float batch used as it is
    drop_last: skip the final batch when it is smaller than ``batch_size``
    device:    move each batch to the active backend's device (CuPy on the GPU backend)
    prefetch:  prepare up to this many batches ahead in a background thread (0: off). It
               pays off when the training step releases the GIL (BLAS, Numba, CuPy); on
               its own the loader is faster without it (benchmarks/bench_loader.py). On the
               GPU each batch carries an event that the training stream waits on
    """

    def __init__(self, images, labels, batch_size: int = 128, shuffle: bool = True,
                 transform=None, drop_last: bool = False, seed: int = 0,
                 device: bool = False, prefetch: int = 0, num_classes: int | None = None,
                 normalize=None):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or labels.shape != (len(images),):
            raise ValueError(f"DataLoader: need images (N, C, H, W) and labels (N,); got "
                             f"images {images.shape} and labels {labels.shape}")
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1; got {batch_size}")
        self.images = images
        self.labels, self.label_range = _class_indices(labels, num_classes)
        self.batch_size, self.shuffle, self.transform = batch_size, shuffle, transform
        self.normalize = normalize
        self.drop_last, self.seed, self.device, self.prefetch = drop_last, seed, device, prefetch
        self.epoch = 0  # the epoch the next iteration will produce

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce epoch ``epoch`` (its order and augmentations)."""
        self.epoch = epoch

    def __iter__(self):
        order_rng = np.random.default_rng(
            np.random.SeedSequence([self.seed, self.epoch]).spawn(2)[0])
        epoch, self.epoch = self.epoch, self.epoch + 1
        batches = self._batches(order_rng, epoch)
        if self.prefetch <= 0:
            return batches
        marked = ((x, y, mark_ready(x)) for x, y in batches)      # run by the producer
        return _handed_over(_prefetched(marked, self.prefetch))

    def _batches(self, order_rng, epoch: int):
        n = len(self.images)
        order = order_rng.permutation(n) if self.shuffle else np.arange(n)
        augment = KeyedRandom(derive_key(self.seed, AUGMENT_STREAM))
        for step, start in enumerate(range(0, len(self) * self.batch_size, self.batch_size)):
            idx = order[start:start + self.batch_size]
            x, y = self.images[idx], self.labels[idx]
            rng = augment.at(epoch, step)
            if self.transform is not None and not self._transform_on_device:
                x = self.transform(x, rng)                # on the host, then copied
            if self.device:
                x, y = to_device(x), to_device(y)
            if self.transform is not None and self._transform_on_device:
                x = self.transform(x, rng)                # where the batch now is
            yield self._to_float(x), y

    @property
    def _transform_on_device(self) -> bool:
        """Whether the transform runs after the copy, on the batch's device (crops and
        flips, written with the batch's array module; transforms.py), or before it."""
        return getattr(self.transform, "on_device", False)

    def _to_float(self, x):
        """float32 where the batch now lives: normalised, or uint8 scaled to [0, 1]."""
        if self.normalize is not None:
            return self.normalize(x)
        return x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 \
            else x.astype(np.float32)


def _class_indices(labels: np.ndarray, num_classes: int | None) -> tuple:
    """(``labels`` as int64 class indices, their (min, max) or None if there are none),
    checked once here rather than in every batch.

    A cast would turn 1.7 into 1, -1 into the last class of a loss that indexes with it,
    and a uint64 above 2**63 into a negative number, all without a word.
    """
    if labels.dtype.kind not in "iu":
        raise ValueError(f"DataLoader: labels must be integer class indices; got dtype "
                         f"{labels.dtype}" + (f" (first values {labels[:3].tolist()}); if they "
                         "are whole numbers, pass labels.astype(np.int64)"
                         if labels.dtype.kind == "f" else ""))
    span = None
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        top = np.iinfo(np.int64).max if num_classes is None else num_classes - 1
        if low < 0 or high > top:
            raise ValueError(f"DataLoader: labels must lie in [0, {top}]; got values in "
                             f"[{low}, {high}]")
        span = (low, high)
    return labels.astype(np.int64, copy=False), span


def _prefetched(batches, depth: int):
    """Run the generator ``batches`` in a background thread, ``depth`` items ahead.

    The consumer may stop early (break out of its loop): closing this generator sets
    ``stop``, which the producer checks between items, so the thread always ends.
    Exceptions in the producer are re-raised in the consumer.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        """Queue ``item``, waiting for room; give up (False) once the consumer has left."""
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in batches:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
            return
        put(done)

    thread = threading.Thread(target=produce, name="DataLoader-prefetch", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _handed_over(marked):
    """Batches from the prefetch thread, each once its copy to the device is complete.

    ``mark_ready`` recorded an event on the producer's stream after the batch's copy and
    normalisation; ``wait_ready`` makes the consumer's stream wait for it (on the GPU,
    without blocking the host; on the CPU both are no-ops).
    """
    try:
        for x, y, marker in marked:
            wait_ready(marker)
            yield x, y
    finally:
        marked.close()                  # stops the prefetch thread when the consumer leaves
