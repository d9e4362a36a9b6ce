"""GPUs: one rank per GPU, device arrays reduced by NCCL through CuPy (``cupy.cuda.nccl``).

NCCL (NVIDIA's collective communications library) sums arrays that live on the GPUs --
over NVLink, PCIe or InfiniBand -- without a copy to the host, as a CUDA kernel on the
stream the computation runs on. It needs a bootstrap: rank 0 draws a unique id, MPI
broadcasts it, and every rank joins the NCCL communicator with it. MPI keeps doing what
is not an array on a GPU (host numbers, Python objects, barriers).

    comm = NCCLComm(MPIComm())            # after use_local_gpu(): one GPU per rank
    comm.allreduce(grads_on_gpu)          # ncclAllReduce(in place, sum) on the current stream

The operations are queued on the current CUDA stream, so the optimizer's kernels, queued
after them on the same stream, see the sums: nothing waits on the host. Everything
CuPy-specific is reached through three small functions (``device_array``, ``pointer``,
``stream``) and the ``nccl`` module, so tests on a machine without a GPU inject fakes
(tests/test_distributed_nccl.py) and check what would be sent: the id's broadcast, the
pointers, counts, data types, the operation and the root.
"""

from __future__ import annotations

import numpy as np

from minivgg.backend import is_cupy_array
from minivgg.distributed.comm import Communicator, Done


def use_local_gpu(local_rank: int) -> int:
    """Make GPU ``local_rank`` (mod the GPUs this machine has) current; its number.

    Must run before the first CuPy allocation: arrays live on the GPU current when they
    were made.
    """
    import cupy
    device = local_rank % cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(device).use()
    return device


def _cupy_pointer(a) -> int:
    return a.data.ptr


def _cupy_stream() -> int:
    import cupy
    return cupy.cuda.get_current_stream().ptr


def _cupy_nccl():
    from cupy.cuda import nccl
    return nccl


class NCCLComm(Communicator):
    """Device arrays through NCCL, everything else through ``mpi`` (an MPIComm)."""

    def __init__(self, mpi, nccl=None, *, device_array=is_cupy_array, pointer=_cupy_pointer,
                 stream=_cupy_stream):
        self.mpi, self.nccl = mpi, nccl if nccl is not None else _cupy_nccl()
        self.rank, self.size, self.local_rank = mpi.rank, mpi.size, mpi.local_rank
        self.device_array, self.pointer, self.stream = device_array, pointer, stream
        uid = self.mpi.broadcast_object(self.nccl.get_unique_id() if self.rank == 0 else None)
        self.comm = self.nccl.NcclCommunicator(self.size, uid, self.rank)
        self.dtypes = {np.dtype(np.float32): self.nccl.NCCL_FLOAT32,
                       np.dtype(np.float64): self.nccl.NCCL_FLOAT64}

    def _nccl_type(self, a):
        try:
            return self.dtypes[np.dtype(a.dtype)]
        except KeyError:
            raise TypeError(f"NCCLComm: arrays on the GPU must be float32 or float64, got "
                            f"{a.dtype}") from None

    def allreduce(self, a) -> None:
        if not self.device_array(a):
            return self.mpi.allreduce(a)
        if not a.flags.c_contiguous:
            raise ValueError(f"NCCLComm.allreduce: expected a C-contiguous array, got shape "
                             f"{a.shape} with strides {a.strides}")
        ptr = self.pointer(a)
        self.comm.allReduce(ptr, ptr, a.size, self._nccl_type(a), self.nccl.NCCL_SUM,
                            self.stream())

    def allreduce_async(self, a):
        self.allreduce(a)          # NCCL is asynchronous already: queued on the stream
        return Done()

    def broadcast(self, a, root: int = 0) -> None:
        if not self.device_array(a):
            return self.mpi.broadcast(a, root)
        self.comm.bcast(self.pointer(a), a.size, self._nccl_type(a), root, self.stream())

    def broadcast_object(self, obj, root: int = 0):
        return self.mpi.broadcast_object(obj, root)

    def gather_object(self, obj, root: int = 0):
        return self.mpi.gather_object(obj, root)

    def barrier(self) -> None:
        self.mpi.barrier()

    def abort(self, code: int = 1) -> None:
        try:
            self.comm.abort()          # frees the GPUs' peers blocked in a collective
        finally:
            self.mpi.abort(code)


def gpu_communicator(mpi) -> Communicator:
    """NCCLComm where CuPy has NCCL, else ``mpi`` itself (device arrays staged on the host)."""
    try:
        nccl = _cupy_nccl()
    except ImportError:
        return mpi
    if not getattr(nccl, "available", True):
        return mpi
    return NCCLComm(mpi, nccl)
