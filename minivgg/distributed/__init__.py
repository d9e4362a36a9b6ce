"""Data parallelism: one model trained by N processes (ranks), each on 1/N of every batch.

    mpirun -n 4 minivgg train --dataset cifar10 --batch-size 256      # 64 images per rank
    mpirun -n 4 minivgg train ... --sync-bn                           # global BN statistics

What happens, and where:

    launch.py        who we are: world() -> SingleProcess, or MPIComm under mpirun
    comm.py          the collectives (allreduce, broadcast, ...): MPI, one process, threads
    nccl.py          GPUs: one rank per GPU, device arrays through cupy.cuda.nccl
    sharding.py      each rank's rows of every global batch, and of the evaluation sets
    gradients.py     all gradients in one flat buffer, allreduced in buckets
    trainer.py       the data-parallel step and the Trainer that runs it on every rank
    simulate.py      N ranks in one process, for gradient checks
    minivgg.layers.SyncBatchNorm2D      batch norm with the statistics of the global batch

The rule everything follows: with the same seed, N ranks end an epoch with the weights
one process gets with the same global batch (to rounding), and only rank 0 writes.
Lesson 18 explains why that works, and what it costs.
"""

from minivgg.distributed.comm import Communicator, MPIComm, SingleProcess, ThreadGroup
from minivgg.distributed.gradients import GradientBuffer
from minivgg.distributed.launch import LaunchError, world
from minivgg.distributed.sharding import ShardedLoader, shard_bounds

__all__ = ["Communicator", "SingleProcess", "MPIComm", "ThreadGroup", "GradientBuffer",
           "ShardedLoader", "shard_bounds", "world", "LaunchError"]
