"""Which images each rank sees: its slice of every global batch, and of the evaluation set.

Training. Every rank runs the same DataLoader with the same seed, so every rank draws the
same epoch order and the same augmentations -- for the whole global batch of B images --
and keeps only its rows::

    rank r of N keeps rows [lo_r, hi_r) of each batch     (shard_bounds: sizes differ by <= 1)

That costs each rank the augmentation of all B images (cheap next to a training step:
crops and flips of uint8 arrays), and buys exactness: the ranks together train on
exactly the batches, crops and flips a single process would, whatever N is.

Dropout draws its masks the same way (RankSlicedStream): each rank draws the mask of the
whole batch from the shared generator and keeps its rows, so the generators stay equal
on every rank (rank 0 saves them) and the masks equal the single process's.

Evaluation. Rank r scores the contiguous block [lo_r, hi_r) of the validation or test
set; the sums of losses and hits are added over the ranks (trainer.evaluate_sharded).
"""

from __future__ import annotations

from minivgg.backend import to_device
from minivgg.data import DataLoader


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of ``n`` that rank ``rank`` of ``size`` takes: the first ``n % size``
    ranks one row more than the others (numpy.array_split's rule)."""
    if not 0 <= rank < size:
        raise ValueError(f"shard_bounds: rank must be in [0, {size}), got {rank}")
    q, r = divmod(n, size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


class ShardedLoader:
    """This rank's rows of every batch of ``loader`` (a DataLoader, the global batches).

    ``global_size`` and ``bounds`` describe the batch last produced. Batches move to the
    device after slicing (each rank moves only its rows).
    """

    def __init__(self, loader: DataLoader, comm):
        self.loader, self.comm = loader, comm
        self.device, loader.device = loader.device, False   # the slice moves, not the batch
        self.global_size, self.bounds = 0, (0, 0)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for x, y in self.loader:
            lo, hi = shard_bounds(len(y), self.comm.rank, self.comm.size)
            if hi == lo:
                raise ValueError(f"ShardedLoader: a batch of {len(y)} images cannot give each "
                                 f"of {self.comm.size} ranks at least one; use a --batch-size "
                                 f"of at least {self.comm.size}")
            self.global_size, self.bounds = len(y), (lo, hi)
            x, y = x[lo:hi], y[lo:hi]
            yield (to_device(x), to_device(y)) if self.device else (x, y)


def shard_eval_loader(loader: DataLoader, comm) -> DataLoader:
    """A loader over this rank's contiguous block of ``loader``'s images (maybe none)."""
    lo, hi = shard_bounds(len(loader.images), comm.rank, comm.size)
    return DataLoader(loader.images[lo:hi], loader.labels[lo:hi], loader.batch_size,
                      shuffle=False, transform=loader.transform, normalize=loader.normalize,
                      device=loader.device)


class RankSlicedStream:
    """Stands in for a dropout layer's keyed generator: draws the mask of the whole global
    batch, keeps this rank's rows (``ShardedLoader.bounds``). Everything else (``at``,
    ``state_dict``, ``seed``) is the shared generator's, so positions, checkpoints and
    resume work as in one process."""

    def __init__(self, generator, loader: ShardedLoader):
        self.generator, self.loader = generator, loader

    def __getattr__(self, name):
        return getattr(self.generator, name)

    def _whole_batch(self, shape):
        lo, hi = self.loader.bounds
        if not shape or shape[0] != hi - lo:            # not a shard of the current batch
            return None, slice(None)
        return (self.loader.global_size, *shape[1:]), slice(lo, hi)

    def keep_mask(self, shape, p: float, **kwargs):
        full, rows = self._whole_batch(tuple(shape))
        return self.generator.keep_mask(full or shape, p, **kwargs)[rows]

    def random(self, shape, *args, **kwargs):
        full, rows = self._whole_batch(tuple(shape))
        return self.generator.random(full or shape, *args, **kwargs)[rows]
