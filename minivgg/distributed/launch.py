"""Are we one rank of several? Which communicator, and which GPU, does this process get?

``minivgg train`` never starts processes itself: the MPI launcher the user already has
(``mpirun -n 4``, ``mpiexec``, ``srun --mpi=pmix``) starts N copies of the command and
tells each, through its environment, that it is one of N. ``world()`` reads that and
returns the communicator: SingleProcess for a plain run, MPIComm (mpi4py) under a
launcher. Two mistakes are caught here with a message instead of N silent, independent
runs that overwrite each other: mpi4py missing, and mpi4py built against another MPI
than the launcher's (each process then sees a world of one).
"""

from __future__ import annotations

import os

from minivgg.distributed.comm import Communicator, SingleProcess

# what the launchers set: Open MPI (and PRRTE), MPICH / Intel MPI / Slurm's PMI
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
INSTALL_HINT = ('pip install -e ".[mpi]" (mpi4py and MPICH\'s wheel), or pip install mpi4py '
                "against the MPI your cluster provides")


class LaunchError(RuntimeError):
    """Started by an MPI launcher, but MPI cannot be used as it is installed."""


def launched_size(environ=os.environ) -> int:
    """How many processes the launcher says it started (1 when there is no launcher)."""
    for name in SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def world(environ=os.environ) -> Communicator:
    """The communicator of this process: MPIComm under a launcher of N > 1, else
    SingleProcess."""
    size = launched_size(environ)
    if size <= 1:
        return SingleProcess()
    try:
        from mpi4py import MPI  # noqa: F401  (initialises MPI)
    except ImportError as exc:
        raise LaunchError(f"started by an MPI launcher as one of {size} processes, but "
                          f"mpi4py cannot be imported ({exc}); install it: "
                          f"{INSTALL_HINT}") from None
    from minivgg.distributed.comm import MPIComm
    comm = MPIComm()
    if comm.size != size:
        raise LaunchError(f"the launcher started {size} processes but MPI sees a world of "
                          f"{comm.size}: mpirun and mpi4py use different MPI libraries. Use "
                          "the mpirun (mpiexec) that belongs to mpi4py's MPI (python -c "
                          "'import mpi4py; print(mpi4py.get_config())'); with the mpi extra "
                          "that is the mpiexec in the same bin folder as python")
    return comm
