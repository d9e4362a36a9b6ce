"""``mpirun -n N minivgg train ...``: the train command, as one of N ranks.

Rank 0 decides -- reads the options or the run's config.json, checks and names the run
folder -- and broadcasts its decision, so every rank builds the same run. Every rank then
builds the data and the model from the same seed and trains its shard
(minivgg.distributed.trainer); rank 0 alone holds the run folder, prints and writes.

Failures. An outcome every rank reaches together (a refused option, a diverged loss, a
Ctrl-C) ends every rank with the same exit status. Anything else that happens on one
rank only -- a missing file, a bug, an out-of-memory -- would leave the others waiting
in their next collective for ever, so it is printed with the rank's number and the whole
job is aborted (MPI_Abort). A rank killed outright is the launcher's to notice: mpirun
then ends the others. Either way the checkpoints on disk are the last complete ones:
rank 0 writes them atomically (minivgg.files).
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from pathlib import Path

from minivgg.commands.common import UserError, load_run

AGREED = (UserError,)          # raised on every rank alike (decided by rank 0, broadcast)


def train_over_ranks(args, comm) -> int:
    """The train command on this rank of ``comm``; the exit status."""
    try:
        return _train(args, comm)
    except BaseException as exc:  # noqa: B036  (every other failure ends the whole job)
        if isinstance(exc, AGREED) and getattr(exc, "agreed", False):
            if comm.rank != 0:
                return 2
            raise
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else \
            f"{type(exc).__name__}: {exc}"
        print(f"minivgg train: rank {comm.rank} of {comm.size} failed ({what}); stopping "
              "every rank. The checkpoints in the run folder are the last complete ones.",
              file=sys.stderr)
        if not isinstance(exc, (KeyboardInterrupt, UserError)):
            traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        comm.abort(1)
        raise


def _agreed(message: str) -> UserError:
    exc = UserError(message)
    exc.agreed = True
    return exc


def _decide(args, comm) -> tuple[dict, str | None]:
    """Rank 0: the configuration and the folder (None: a fresh name), or what is wrong."""
    from minivgg.commands.training import config_and_folder
    from minivgg.files import RunFileError
    from minivgg.runfolder import RunFolderError
    if args.overfit_batch is not None:
        raise UserError("--overfit-batch is a single-process check; run it without mpirun")
    try:
        config, run_dir = config_and_folder(args)
    except (RunFileError, RunFolderError) as exc:
        raise UserError(str(exc)) from None
    if config["batch_size"] < comm.size:
        raise UserError(f"--batch-size {config['batch_size']} is the global batch, split over "
                        f"{comm.size} ranks: it must be at least {comm.size}")
    return config, (str(run_dir) if run_dir is not None else None)


def _train(args, comm) -> int:
    decision = None
    if comm.rank == 0:
        try:
            decision = ("ok", *_decide(args, comm))
        except UserError as exc:
            decision = ("refused", str(exc), None)
    status, config, run_dir = comm.broadcast_object(decision)
    if status == "refused":
        raise _agreed(config)
    if comm.size > 1 and config["backend"] in ("auto", "cupy"):
        _take_a_gpu(comm)
    run = load_run(config)
    if run.device == "gpu":
        from minivgg.distributed.nccl import gpu_communicator
        comm = gpu_communicator(comm)
    if config.get("sync_bn"):
        from minivgg.layers.sync_batch_norm import convert_sync_batchnorm
        convert_sync_batchnorm(run.model, comm)
    if comm.rank == 0 and run_dir is None:
        from minivgg.runfolder import new_run_dir
        run_dir = str(new_run_dir(config["dataset"], config["model"]))
    run_dir = Path(comm.broadcast_object(run_dir))
    if comm.rank == 0:
        from minivgg.runfolder import RunFolder
        folder = RunFolder(run_dir, resume=bool(args.resume))
    else:
        folder = contextlib.nullcontext()
    with folder:
        return _train_in(run, run_dir, args, comm)


def _take_a_gpu(comm) -> None:
    """One GPU per rank (by the rank's number on its machine), before any CuPy array."""
    from minivgg.backend import cupy_problem
    if cupy_problem() is None:
        from minivgg.distributed.nccl import use_local_gpu
        use_local_gpu(comm.local_rank)


def _train_in(run, run_dir: Path, args, comm) -> int:
    from minivgg.commands.training import report
    from minivgg.distributed.trainer import DistributedTrainer, quiet
    from minivgg.files import write_json
    from minivgg.train import TrainingDiverged
    rank0 = comm.rank == 0
    say = print if rank0 else quiet
    trainer = DistributedTrainer.for_run(run, run_dir, comm, log=say,
                                         progress=rank0 and not args.no_progress)
    if args.resume:
        trainer.restore(run_dir / "last.npz")
        say(f"resuming {run_dir} at epoch {trainer.epoch + 1}, batch {trainer.batch + 1}")
    elif rank0:
        write_json(run_dir / "config.json", run.config)
    c, b = run.config, run.config["batch_size"]
    say(f"{run.dataset!r}\n{run.model.title} width {c['width']}: "
        f"{run.model.num_parameters():,} parameters | {c['optimizer']} lr {c['lr']} "
        f"{c['schedule']} | backend {run.backend} | run folder {run_dir}\n"
        f"data parallel: {comm.size} ranks ({type(comm).__name__}), global batch {b} = "
        f"{b // comm.size}{'+' if b % comm.size else ''} per rank, batch norm "
        f"{'synchronised (--sync-bn)' if c.get('sync_bn') else 'per rank'}, gradients "
        f"{trainer.gradients.nbytes / 2**20:.1f} MiB in {len(trainer.gradients.buckets)} "
        "bucket(s)")
    try:
        result = trainer.fit()
    except TrainingDiverged as exc:
        if rank0:
            print(f"minivgg train: {exc}", file=sys.stderr)
        return 1
    if result["status"] == "interrupted":
        return 128 + int(trainer.stop_requested)
    if rank0:
        report(trainer, run_dir)
        if not args.no_plots:
            from minivgg.plots import run_plots
            run_plots(run_dir, run, trainer.history, trainer.last_test)
    return 0
