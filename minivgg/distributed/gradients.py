"""Every gradient of a model in one flat buffer, summed over the ranks bucket by bucket.

After ``model.backward`` each rank holds the gradient of its share of the global batch.
Adding them over the ranks gives the gradient of the whole batch (lesson 18 shows why).
Reducing each parameter on its own would be one collective per tensor -- 30 small
messages for a VGG-11, each paying the network's latency -- so, as Horovod and PyTorch's
DDP do, the gradients live side by side in one flat array:

    flat = [ grad of the last layer | ... | grad of the first layer ]      (P,) floats
    p.grad = flat[offset : offset + p.size].reshape(p.shape)              a view, per p

Layers write ``p.grad[...] = ...`` in place, so backward fills ``flat`` without a copy,
and the reduction is a few large messages: ``flat`` cut into buckets of at most
``bucket_bytes`` (25 MiB, DDP's default), all started at once (``allreduce_async``) and
then waited for. The last layers come first because backward finishes them first: a
later version could start their bucket while the first layers are still computing.
"""

from __future__ import annotations

from minivgg.backend import device_of, get_array_module

BUCKET_BYTES = 25 * 2**20


class GradientBuffer:
    """The gradients of ``params`` ({name: Parameter}) as views of one flat array."""

    def __init__(self, params: dict, comm, bucket_bytes: int = BUCKET_BYTES):
        if not params:
            raise ValueError("GradientBuffer: got no parameters")
        items = list(params.items())[::-1]                 # last layer first
        first = items[0][1].data
        for name, p in items:
            if p.data.dtype != first.dtype or device_of(p.data) != device_of(first):
                raise ValueError(f"GradientBuffer: every parameter must share one dtype and "
                                 f"device; {name} is {p.data.dtype} on {device_of(p.data)}, "
                                 f"{items[0][0]} is {first.dtype} on {device_of(first)}")
        xp = get_array_module(first)
        self.comm, self.names = comm, [name for name, _ in items]
        self.params = [p for _, p in items]
        self.flat = xp.zeros(sum(int(p.data.size) for p in self.params), dtype=first.dtype)
        self.views, offset = [], 0
        for p in self.params:
            view = self.flat[offset:offset + p.data.size].reshape(p.data.shape)
            view[...] = p.grad
            p.grad = view                                  # same shape, dtype and device
            self.views.append(view)
            offset += p.data.size
        per_bucket = max(1, bucket_bytes // self.flat.itemsize)
        self.buckets = [(lo, min(lo + per_bucket, self.flat.size))
                        for lo in range(0, self.flat.size, per_bucket)]

    @property
    def nbytes(self) -> int:
        return int(self.flat.nbytes)

    def check(self) -> None:
        """Every parameter still writes into the buffer (no one replaced a .grad)."""
        for name, p, view in zip(self.names, self.params, self.views):
            if p.grad is not view:
                raise RuntimeError(f"GradientBuffer: {name}.grad is no longer a view of the "
                                   "flat buffer (the parameter was moved, cast or given a new "
                                   "gradient array); build the buffer after placing the model")

    def allreduce(self) -> None:
        """Sum the gradients over the ranks, in place: every bucket started, then awaited."""
        self.check()
        pending = [self.comm.allreduce_async(self.flat[lo:hi]) for lo, hi in self.buckets]
        for handle in pending:
            handle.wait()
