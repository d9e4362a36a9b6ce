"""Communicators: what the ranks of a data-parallel run say to each other.

A communicator is the group of processes (ranks 0 .. size-1) that train one model. The
training step needs only a handful of collective operations, every rank calling each of
them in the same order:

    allreduce(a)              a <- the sum of every rank's a, in place, on every rank
    allreduce_async(a)        the same, started now; ``.wait()`` on the returned handle
    broadcast(a, root=0)      a <- root's a, in place
    broadcast_object(obj)     root's Python object, on every rank (a run folder's name)
    gather_object(obj)        [every rank's obj] on the root, None elsewhere
    barrier()                 wait until every rank is here
    abort(code)               end every rank of the job now

Three implementations live here:

    SingleProcess   one rank; every operation is the identity (a plain ``minivgg train``)
    MPIComm         mpi4py over MPI.COMM_WORLD (``mpirun -n N minivgg train``)
    ThreadGroup     N ranks as N threads of one process, for tests and the lesson: the
                    same collectives, no launcher, and sums taken in rank order so every
                    rank gets the same bits

``minivgg.distributed.nccl.NCCLComm`` adds NCCL for arrays on GPUs.
"""

from __future__ import annotations

import copy
import threading

import numpy as np

from minivgg.backend import asnumpy, get_array_module, is_cupy_array


class Done:
    """The handle of an operation that has already finished."""

    def wait(self) -> None:
        return None


class Communicator:
    """The interface; the default methods are those of a group of one."""

    rank, size, local_rank = 0, 1, 0

    def allreduce(self, a) -> None:
        """Replace ``a`` (a contiguous array) by the sum over the ranks, on every rank."""

    def allreduce_async(self, a):
        """Start ``allreduce(a)``; the result is in ``a`` after ``.wait()``."""
        self.allreduce(a)
        return Done()

    def broadcast(self, a, root: int = 0) -> None:
        """Replace ``a`` by ``root``'s ``a``, in place."""

    def broadcast_object(self, obj, root: int = 0):
        return obj

    def gather_object(self, obj, root: int = 0):
        return [obj] if self.rank == root else None

    def barrier(self) -> None:
        return None

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)

    def __repr__(self):
        return f"{type(self).__name__}(rank {self.rank} of {self.size})"


class SingleProcess(Communicator):
    """One process, one rank: nothing to exchange."""


def _check_buffer(who: str, a) -> None:
    if not hasattr(a, "flags") or not a.flags.c_contiguous:
        raise ValueError(f"{who}: expected a C-contiguous array to reduce in place, got "
                         f"{type(a).__name__}" + (f" of shape {a.shape}, not contiguous"
                                                  if hasattr(a, "shape") else ""))


class MPIComm(Communicator):
    """The ranks an MPI launcher started, through mpi4py.

    NumPy arrays go straight to MPI (``Allreduce(MPI.IN_PLACE, a)``). CuPy arrays go to
    MPI directly when it is CUDA-aware (``cuda_aware=True``: mpi4py reads their
    ``__cuda_array_interface__``) and through a host copy otherwise; NCCLComm is the fast
    way for GPUs.
    """

    def __init__(self, comm=None, cuda_aware: bool = False):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        # the rank among the processes of this machine: which GPU a rank takes
        self.local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        self.cuda_aware = cuda_aware

    def _via_host(self, a) -> bool:
        if not is_cupy_array(a):
            return False
        if self.cuda_aware:
            import cupy
            cupy.cuda.get_current_stream().synchronize()   # MPI reads the memory now
            return False
        return True

    def allreduce(self, a) -> None:
        _check_buffer("MPIComm.allreduce", a)
        if self._via_host(a):
            host = asnumpy(a)
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            a[...] = get_array_module(a).asarray(host)
            return
        self.comm.Allreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM)

    def allreduce_async(self, a):
        _check_buffer("MPIComm.allreduce_async", a)
        if is_cupy_array(a):
            self.allreduce(a)
            return Done()
        return self.comm.Iallreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM)   # .wait()

    def broadcast(self, a, root: int = 0) -> None:
        _check_buffer("MPIComm.broadcast", a)
        if self._via_host(a):
            host = asnumpy(a)
            self.comm.Bcast(host, root=root)
            a[...] = get_array_module(a).asarray(host)
            return
        self.comm.Bcast(a, root=root)

    def broadcast_object(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def gather_object(self, obj, root: int = 0):
        return self.comm.gather(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


class ThreadGroup:
    """``size`` ranks as threads of this process, for tests and lessons.

        group = ThreadGroup(2)
        results = group.run(lambda comm: work(comm))     # one result per rank, in order

    Each collective is two meetings at a barrier: every rank posts its array, then every
    rank computes the same result from the posts (sums added in rank order: identical
    bits on every rank, as MPI gives two ranks), then all leave. A rank that fails breaks
    the barrier, so the others stop instead of waiting for ever.
    """

    def __init__(self, size: int, timeout: float = 120.0):
        if size < 1:
            raise ValueError(f"ThreadGroup: size must be >= 1, got {size}")
        self.size = size
        self.meeting = threading.Barrier(size, timeout=timeout)
        self.posts: list = [None] * size

    def ranks(self) -> list[ThreadRank]:
        return [ThreadRank(self, r) for r in range(self.size)]

    def run(self, fn) -> list:
        """Call ``fn(comm)`` on every rank, each in its own thread; the results by rank.

        The first exception of any rank is raised here once all threads have ended.
        """
        results, errors = [None] * self.size, [None] * self.size

        def body(comm):
            try:
                results[comm.rank] = fn(comm)
            except BaseException as exc:  # noqa: B036  (handed to the caller below)
                errors[comm.rank] = exc
                self.meeting.abort()

        threads = [threading.Thread(target=body, args=(c,), name=f"rank-{c.rank}")
                   for c in self.ranks()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        first = next((e for e in errors if e is not None and
                      not isinstance(e, threading.BrokenBarrierError)), None)
        first = first or next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return results


class ThreadRank(Communicator):
    """One rank of a ThreadGroup."""

    def __init__(self, group: ThreadGroup, rank: int):
        self.group, self.rank, self.size, self.local_rank = group, rank, group.size, rank

    def _meet(self, post):
        """Post ``post``, wait for every rank's; all posts, in rank order."""
        g = self.group
        g.posts[self.rank] = post
        g.meeting.wait()
        posts = list(g.posts)
        g.meeting.wait()              # nobody posts the next operation before all have read
        return posts

    def allreduce(self, a) -> None:
        _check_buffer("ThreadRank.allreduce", a)
        posts = self._meet(a.copy())
        total = posts[0].copy()
        for p in posts[1:]:
            total += p
        a[...] = total

    def broadcast(self, a, root: int = 0) -> None:
        _check_buffer("ThreadRank.broadcast", a)
        posts = self._meet(a.copy() if self.rank == root else None)
        a[...] = posts[root]

    def broadcast_object(self, obj, root: int = 0):
        posts = self._meet(copy.deepcopy(obj) if self.rank == root else None)
        return copy.deepcopy(posts[root])        # each rank its own copy, as over MPI

    def gather_object(self, obj, root: int = 0):
        posts = self._meet(copy.deepcopy(obj))
        return posts if self.rank == root else None

    def barrier(self) -> None:
        self._meet(None)

    def abort(self, code: int = 1) -> None:
        self.group.meeting.abort()
        raise SystemExit(code)


def sum_over_ranks(comm: Communicator, values) -> np.ndarray:
    """A few host numbers (loss sums, counts) added over the ranks, as float64."""
    a = np.array(values, dtype=np.float64)
    comm.allreduce(a)
    return a
