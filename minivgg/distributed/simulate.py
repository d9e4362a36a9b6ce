"""R ranks inside one process, for gradient checks: one layer outside, R replicas inside.

``check_layer`` differentiates a function of one input. ``SimulatedRanks`` is such a
function built from R ranks: it cuts the batch into R shards (shard_bounds), runs a
replica of the layer on each shard in its own thread of a ThreadGroup -- so collectives
inside the layer (SyncBatchNorm2D's allreduces) really meet -- and concatenates the
outputs. Backward cuts the upstream gradient the same way, runs the replicas' backward
passes, concatenates the input gradients and adds the replicas' parameter gradients (the
training step's gradient allreduce). The replicas share their parameters' arrays, so the
checker's perturbations reach every rank.

    layer = SimulatedRanks(lambda comm: SyncBatchNorm2D(3, comm, dtype=np.float64), 2)
    check_layer(layer, x)          # the gradient of the global function, across 2 ranks
"""

from __future__ import annotations

from minivgg.backend import get_array_module
from minivgg.distributed.comm import ThreadGroup
from minivgg.distributed.sharding import shard_bounds
from minivgg.layers.base import Layer


class SimulatedRanks(Layer):
    """``make_layer(comm)`` built once per rank of a ThreadGroup of ``size``."""

    def __init__(self, make_layer, size: int):
        self.group = ThreadGroup(size)
        self.replicas = [make_layer(comm) for comm in self.group.ranks()]
        self.size, self.cache = size, None
        shared = self.replicas[0].named_parameters()
        for name, p in shared.items():
            setattr(self, name, p)                       # the parameters the checker sees
        for replica in self.replicas[1:]:
            for name, p in replica.named_parameters().items():
                p.data = shared[name].data               # one array, seen by every rank

    def _shards(self, a):
        return [a[slice(*shard_bounds(len(a), r, self.size))] for r in range(self.size)]

    def forward(self, x, training=None):
        shards = self._shards(x)
        outputs = self.group.run(
            lambda comm: self.replicas[comm.rank].forward(shards[comm.rank], training))
        self.cache = True
        return get_array_module(x).concatenate(outputs)

    def backward(self, dout):
        self._cached(self.cache)
        shards = self._shards(dout)
        dxs = self.group.run(lambda comm: self.replicas[comm.rank].backward(shards[comm.rank]))
        for name, p in self.named_parameters().items():
            total = sum(replica.named_parameters()[name].grad.copy()
                        for replica in self.replicas)
            p.grad[...] = total                          # rank 0's Parameter: the sum
        return get_array_module(dout).concatenate(dxs)

    def __repr__(self):
        return f"SimulatedRanks({self.replicas[0]!r} x {self.size})"
