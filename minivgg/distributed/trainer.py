"""Data-parallel training: the training step over ranks, sharded evaluation, the Trainer.

One step, on every rank r of N, for its shard (x_r, y_r) of a global batch of B images::

    logits_r = model.forward(x_r)
    L_r      = cross_entropy(logits_r, y_r)              the mean over the b_r images
    g_r      = (b_r / B) * dL_r/dlogits_r                 the shard's part of dL/dlogits,
    model.backward(g_r)                                   L = sum_r (b_r / B) L_r
    grads    = allreduce(grads)                           the sum of the parts: dL/dw
    optimizer.step()                                      the same update on every rank

With equal shards b_r / B = 1 / N: the gradients are *averaged*. Scaling dL_r/dlogits
rather than the finished gradients keeps every backward -- synchronised batch norm's
included, which adds its sums over the ranks on the way back -- a gradient of the one
global loss. Then every rank holds the same weights after every step, as long as it
started with rank 0's (``DistributedTrainer`` broadcasts them) and the sum is the same
on every rank (MPI's is, for two ranks: a + b == b + a).

Agreement is the rule for everything that decides what happens next: the loss that is
checked for NaN is the global one (every rank stops, or none), a Ctrl-C on any rank
stops every rank after the same step, and only rank 0 writes the run folder.
"""

from __future__ import annotations

import math
import signal
import threading

import numpy as np

from minivgg.backend import get_array_module
from minivgg.distributed.comm import sum_over_ranks
from minivgg.distributed.gradients import GradientBuffer
from minivgg.distributed.sharding import RankSlicedStream, ShardedLoader, shard_eval_loader
from minivgg.layers import Dropout
from minivgg.scoring import count_correct, evaluate
from minivgg.train import ADVICE, SPLIT_NAMES, Trainer, TrainingDiverged, model_generators


def distributed_train_step(model, optimizer, x, y, loss_fn, gradients: GradientBuffer,
                           global_batch: int, stop: int = 0) -> tuple[float, int, dict]:
    """One data-parallel step on this rank's shard -> (its loss, its hits, totals).

    ``totals`` holds the global mean loss and whether any rank asked to stop (``stop``
    is this rank's request). Raises TrainingDiverged, on every rank and before any
    weight changes, when the global loss is not finite.
    """
    comm = gradients.comm
    model.train()
    logits = model.forward(x, training=True)
    loss = loss_fn.forward(logits, y)
    dlogits = loss_fn.backward()
    dlogits *= dlogits.dtype.type(len(y) / global_batch)      # this shard's part of dL
    model.backward(dlogits)
    gradients.allreduce()
    correct = count_correct(logits, y, 1)[0]
    loss_sum = loss * len(y) if math.isfinite(loss) else math.inf
    total = sum_over_ranks(comm, [loss_sum, correct, len(y), 1.0 if stop else 0.0])
    global_loss = float(total[0] / total[2])
    if not math.isfinite(global_loss):
        raise TrainingDiverged(f"the loss became {global_loss}")
    optimizer.step()
    return loss, correct, {"loss": global_loss, "stop": bool(total[3] > 0)}


def evaluate_sharded(model, loader, comm, predictions: bool = False) -> dict:
    """``minivgg.scoring.evaluate`` over this rank's block ``loader``, added over the ranks.

    Rank 0's result also has the predictions and labels of the whole set, in order.
    """
    part = evaluate(model, loader, predictions) if len(loader) else None
    n = part["n"] if part else 0
    sums = [part["loss"] * n, part["top1"] * n / 100, part["top5"] * n / 100, n] if part \
        else [0.0, 0.0, 0.0, 0]
    loss_sum, top1, top5, n = sum_over_ranks(comm, sums)
    if n == 0:
        raise ValueError("evaluate_sharded: the loaders of all ranks produced no batches")
    out = {"loss": float(loss_sum / n), "top1": 100.0 * round(top1) / n,
           "top5": 100.0 * round(top5) / n, "n": int(n)}
    if predictions:
        mine = (part["predicted"], part["labels"]) if part else None
        parts = [p for p in (comm.gather_object(mine) or []) if p is not None]
        empty = np.zeros(0, dtype=np.int64)
        out["predicted"] = np.concatenate([p[0] for p in parts]) if parts else empty
        out["labels"] = np.concatenate([p[1] for p in parts]) if parts else empty
    return out


def share_dropout_streams(model, loader: ShardedLoader) -> None:
    """Let every dropout layer draw whole-batch masks and keep this rank's rows."""
    streams = {}
    for _, layer in model.named_layers():
        if isinstance(layer, Dropout) and not isinstance(layer.rng, RankSlicedStream):
            key = id(layer.rng)
            streams.setdefault(key, RankSlicedStream(layer.rng, loader))
            layer.rng = streams[key]


def quiet(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


class DistributedTrainer(Trainer):
    """minivgg.train.Trainer, one per rank; rank 0's state is the run's.

    Every rank trains on its shard and takes part in every collective; only rank 0
    prints, and writes last.npz, best.npz and metrics.csv. On construction and after
    ``restore`` (which only rank 0 reads) rank 0's weights, buffers, optimizer state,
    schedule, generators and position are broadcast. The running sums of the epoch are
    kept per rank and added over the ranks when an epoch ends or a checkpoint is saved.
    Batch-norm running statistics are rank 0's (broadcast before each evaluation and
    save) unless the model synchronises them (--sync-bn), as in PyTorch's DDP.
    """

    def __init__(self, *args, comm, **kwargs):
        super().__init__(*args, **kwargs)
        self.comm = comm
        self.train_loader = ShardedLoader(self.train_loader, comm)
        self.val_loader = None if self.val_loader is None else \
            shard_eval_loader(self.val_loader, comm)
        self.test_loader = None if self.test_loader is None else \
            shard_eval_loader(self.test_loader, comm)
        share_dropout_streams(self.model, self.train_loader)
        self.generators = model_generators(self.model)
        self.gradients = GradientBuffer(self.model.named_parameters(), comm)
        self.signal_pending, self.global_loss = 0, None
        if comm.rank != 0:
            self.log, self.progress = quiet, False
        self.sync_from_rank0()

    @classmethod
    def for_run(cls, run, run_dir, comm, progress: bool = True, log=print):
        return cls(run.model, run.optimizer, run.schedule, run.train_loader, run_dir,
                   run.config["epochs"], val_loader=run.val_loader,
                   test_loader=run.test_loader, facts=run.facts, progress=progress, log=log,
                   comm=comm)

    # -- rank 0's state on every rank ----------------------------------------------------
    def _broadcast(self, a) -> None:
        """Rank 0's values into ``a``, in place (through a contiguous copy if need be)."""
        if a.flags.c_contiguous:
            return self.comm.broadcast(a)
        copy = get_array_module(a).ascontiguousarray(a)
        self.comm.broadcast(copy)
        a[...] = copy

    def share_buffers(self) -> None:
        for buf in self.model.named_buffers().values():
            self._broadcast(buf)

    def sync_from_rank0(self) -> None:
        """Weights, buffers, optimizer state, schedule, generators, position: rank 0's."""
        for p in self.model.parameters():
            self._broadcast(p.data)
        self.share_buffers()
        from minivgg import checkpoint
        mine = None if self.comm.rank else {
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "rng": checkpoint.rng_states(self.generators),
            "position": (self.epoch, self.batch, self.global_step, self.history,
                         self.best_top1, self.best_epoch, self.best_step, self.elapsed)}
        state = self.comm.broadcast_object(mine)
        if self.comm.rank:
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            checkpoint.set_rng_states(self.generators, state["rng"])
            (self.epoch, self.batch, self.global_step, self.history, self.best_top1,
             self.best_epoch, self.best_step, self.elapsed) = state["position"]
            self.sums = {"loss": 0.0, "correct": 0, "seen": 0}   # rank 0 carries the sums

    def global_sums(self) -> dict:
        s = self.sums
        loss, correct, seen = sum_over_ranks(self.comm, [s["loss"], s["correct"], s["seen"]])
        return {"loss": float(loss), "correct": int(round(correct)), "seen": int(round(seen))}

    # -- the step ------------------------------------------------------------------------
    def train_step(self, x, y):
        """One step; (this rank's loss, its hits) as 0-d arrays, as Trainer sums them. The
        step synchronises anyway (the Allreduce), so they are host numbers here."""
        asked = self.signal_pending                   # as it stands now, on this rank
        for g in self.generators:                     # dropout keyed by (seed, epoch, step)
            g.at(self.epoch, self.batch)
        try:
            loss, correct, total = distributed_train_step(
                self.model, self.optimizer, x, y, self.loss_fn, self.gradients,
                self.train_loader.global_size, asked)
        except TrainingDiverged as exc:
            raise TrainingDiverged(
                f"diverged: {exc} at epoch {self.epoch + 1}, batch {self.batch + 1} "
                f"(lr {self.optimizer.lr:.4g}); training stopped on every rank and "
                f"{self._kept()}. {ADVICE}") from None
        self.global_loss = total["loss"]
        if total["stop"]:                              # every rank stops after this step
            self.stop_requested = asked or signal.SIGTERM
        return np.float64(loss), np.int64(correct)

    def _first_loss(self, loss: float, k: int) -> None:
        super()._first_loss(self.global_loss, k)

    def _install_signal_handlers(self) -> dict:
        """First Ctrl-C or SIGTERM: ask every rank to stop after the next step. Second:
        abort this rank (the launcher then ends the others)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, frame):
            if self.signal_pending:
                raise KeyboardInterrupt
            self.signal_pending = signum
            self.log(f"\n{signal.Signals(signum).name}: every rank stops after this step "
                     "and rank 0 saves a checkpoint (send it again to abort)")

        return {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    # -- evaluation, epochs, files ---------------------------------------------------------
    def _score(self, split: str, loader) -> dict:
        self.share_buffers()                          # every rank scores rank 0's model
        result = evaluate_sharded(self.model, loader, self.comm, predictions=(split == "test"))
        if split == "test":
            self.last_test = result
        if not math.isfinite(result["loss"]):
            raise TrainingDiverged(
                f"diverged: the {SPLIT_NAMES[split]} loss became {result['loss']} after "
                f"epoch {self.epoch + 1} (lr {self.optimizer.lr:.4g}); training stopped and "
                f"nothing of this epoch was saved. {ADVICE}")
        return result

    def _end_epoch(self) -> None:
        self.sums = self.global_sums()
        super()._end_epoch()

    def write_metrics(self) -> None:
        if self.comm.rank == 0:
            super().write_metrics()

    def save(self, also_best: bool = False) -> None:
        """Rank 0 writes the checkpoint of the global state; every rank takes part."""
        self._collect()                               # this rank's sums, read back
        local, running = self.sums, self.running
        self.sums, self.running = self.global_sums(), None   # Trainer.save records these
        self.share_buffers()
        failure = None
        try:
            if self.comm.rank == 0:
                try:
                    super().save(also_best)
                except TrainingDiverged as exc:
                    failure = str(exc)
        finally:
            self.sums, self.running = local, running
        failure = self.comm.broadcast_object(failure)
        if failure is not None:
            raise TrainingDiverged(failure)

    def restore(self, path):
        """Rank 0 reads the checkpoint (and repairs its folder); the others get its state."""
        ckpt = super().restore(path) if self.comm.rank == 0 else None
        self.sync_from_rank0()
        return ckpt

