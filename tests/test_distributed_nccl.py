"""The NCCL path (one rank per GPU, cupy.cuda.nccl) without a GPU: a fake ``nccl`` module
records what NCCLComm would send and performs it on host memory, ranks as threads. The
real run is marked ``gpu`` (skipped without CuPy and a CUDA device)."""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest

from minivgg.distributed.comm import ThreadGroup
from minivgg.distributed.nccl import NCCLComm


class FakeNccl:
    """The part of cupy.cuda.nccl that NCCLComm uses; the ranks meet on a ThreadGroup."""

    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0
    TYPES = {7: np.float32, 8: np.float64}

    def __init__(self, group: ThreadGroup):
        self.group, self.calls, self.lock = group, [], threading.Lock()
        self.ids = 0

    def get_unique_id(self):
        self.ids += 1
        return (42,) * 128                         # what rank 0 draws and MPI broadcasts

    def NcclCommunicator(self, ndev, uid, rank):  # noqa: N802  (CuPy's name)
        fake = self

        class Communicator:
            def __init__(self):
                self.rank, self.comm = rank, fake.group.ranks()[rank]
                with fake.lock:
                    fake.calls.append(("init", ndev, uid, rank))

            def _array(self, ptr, count, dtype):
                ctype = ctypes.c_float if dtype == fake.NCCL_FLOAT32 else ctypes.c_double
                return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctype)),
                                             shape=(count,))

            def allReduce(self, send, recv, count, dtype, op, stream):  # noqa: N802
                with fake.lock:
                    fake.calls.append(("allReduce", rank, send == recv, count, dtype, op,
                                       stream))
                a = self._array(send, count, dtype)
                self.comm.allreduce(a)             # the sum, over the thread ranks

            def bcast(self, buf, count, dtype, root, stream):
                with fake.lock:
                    fake.calls.append(("bcast", rank, count, dtype, root, stream))
                self.comm.broadcast(self._array(buf, count, dtype), root)

            def abort(self):
                pass
        return Communicator()


def nccl_ranks(size, fn):
    group, mpi_group = ThreadGroup(size), ThreadGroup(size)
    fake = FakeNccl(group)

    def rank(mpi):
        comm = NCCLComm(mpi, fake, device_array=lambda a: a.dtype.kind == "f" and a.ndim == 1,
                        pointer=lambda a: a.ctypes.data, stream=lambda: 99)
        return fn(comm)
    return mpi_group.run(rank), fake


def test_allreduce_and_broadcast_go_through_nccl_with_the_right_arguments():
    def work(comm):
        a = np.full(5, comm.rank + 1.0, dtype=np.float32)
        comm.allreduce(a)
        b = np.arange(3.0) * (comm.rank + 1)
        comm.broadcast(b, root=1)
        host = np.array([[comm.rank]], dtype=np.int64)   # not a "device" array: MPI's way
        comm.allreduce(host)
        return a, b, host

    results, fake = nccl_ranks(2, work)
    for a, b, host in results:
        assert a.tolist() == [3.0] * 5
        assert b.tolist() == [0.0, 2.0, 4.0]
        assert host.tolist() == [[1]]
    assert fake.ids == 1                                   # one id, drawn by rank 0 only
    inits = sorted(c for c in fake.calls if c[0] == "init")
    assert inits == [("init", 2, (42,) * 128, 0), ("init", 2, (42,) * 128, 1)]
    reduces = sorted(c for c in fake.calls if c[0] == "allReduce")
    assert reduces == [("allReduce", r, True, 5, FakeNccl.NCCL_FLOAT32, FakeNccl.NCCL_SUM, 99)
                       for r in (0, 1)]                     # in place, on the current stream
    bcasts = sorted(c for c in fake.calls if c[0] == "bcast")
    assert bcasts == [("bcast", r, 3, FakeNccl.NCCL_FLOAT64, 1, 99) for r in (0, 1)]


def test_gradient_buffer_over_nccl():
    from minivgg.distributed.gradients import GradientBuffer
    from minivgg.layers import Dense

    def work(comm):
        layer = Dense(4, 3, rng=np.random.default_rng(0))
        buf = GradientBuffer(layer.named_parameters(), comm, bucket_bytes=16)
        buf.flat[...] = comm.rank + 1.0
        buf.allreduce()
        return layer.weight.grad.copy(), len(buf.buckets)

    results, fake = nccl_ranks(2, work)
    for grad, buckets in results:
        assert (grad == 3.0).all() and buckets == 4          # 15 floats, 4 per bucket
    assert sum(c[0] == "allReduce" for c in fake.calls) == 2 * 4


def test_unsupported_dtype_is_refused():
    def work(comm):
        with pytest.raises(TypeError, match="float32 or float64"):
            comm.allreduce(np.zeros(2, dtype=np.float16))
    nccl_ranks(1, work)


@pytest.mark.gpu
def test_real_nccl_on_one_gpu():
    """One rank, one GPU: NCCL's allreduce over a world of one is the identity, and the
    broadcast keeps the root's array (the multi-GPU run needs mpirun and GPUs)."""
    import cupy

    class OneRank:
        rank, size, local_rank = 0, 1, 0

        def broadcast_object(self, obj, root=0):
            return obj

    comm = NCCLComm(OneRank())
    a = cupy.arange(10, dtype=cupy.float32)
    comm.allreduce(a)
    comm.broadcast(a)
    cupy.cuda.get_current_stream().synchronize()
    assert cupy.asnumpy(a).tolist() == list(range(10))
