"""The training loop: one training step, epochs of them, evaluation, checkpoints.

    trainer = Trainer.for_run(build_run(config), run_dir)     # minivgg.run
    result = trainer.fit()          # {"status": "done" | "interrupted", "history": [...]}

One step, for a batch (x, y) -- ``train_step``, the only place the package takes one:

    logits = model.forward(x)                  (N, classes), in training mode
    loss   = cross_entropy(logits, y)          a number; must be finite
    model.backward(loss_fn.backward())         fills every Parameter.grad
    optimizer.step()                           w <- w - lr * (...), in place

After each epoch the model is scored (minivgg.scoring) on the validation split, which
selects best.npz and drives reduce-on-plateau, and on the test set, which is reported and
never selected on. Without a validation split the last epoch is the selected one.

No host sync inside a step: the Trainer keeps the running loss sum and correct count on
the device (0-d arrays) and reads them back every ``PROGRESS_EVERY`` steps (the progress
bar), after the run's first step (the first loss), at the end of the epoch and before any
checkpoint -- the GPU never drains in a step.
The labels are checked once for the whole data set (the DataLoader does), not per batch.

Exact resumption: the loader draws epoch e's order from (seed, e) and batch b's
augmentations from a counter-based generator keyed by (seed, e, b); the dropout layers'
keyed generators (minivgg.keyed_random) are moved to (e, b) before each step and their
seeds are saved; the checkpoint records how many batches of the current epoch are done.
``Trainer.restore`` puts all of it back, so on the CPU an interrupted and resumed run ends
with the same weights, bit for bit, as one that ran straight through. The masks and crops
are the same integers on the GPU, drawn there from no host state, so the same holds on a
GPU wherever its kernels are deterministic (not measured: no GPU here).

Write order: last.npz, then best.npz, then metrics.csv. last.npz records which epoch
best.npz should hold and carries the metrics, so a kill between two writes is repaired when
the run resumes (minivgg.runfolder.repair). Nothing non-finite is ever saved: a NaN or an
infinity in the training loss (checked whenever the sums come back, always before a
checkpoint), the weights, the optimizer's state or the running statistics stops the run.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path

from minivgg import checkpoint, files
from minivgg.backend import get_array_module
from minivgg.checkpoint import NonFiniteState, Progress, RunFacts
from minivgg.keyed_random import KeyedRandom
from minivgg.layers import Dropout
from minivgg.losses import SoftmaxCrossEntropy
from minivgg.scoring import correct_counts, count_correct, evaluate, labels_fit  # noqa: F401

ADVICE = "Try a smaller --lr, a --warmup, or --batch-norm."
PROGRESS_EVERY = 25     # steps between reads of the running sums (progress bar, NaN check)
SPLIT_NAMES = {"val": "validation", "test": "test"}


class TrainingDiverged(RuntimeError):
    """The loss or the state became NaN or infinite; nothing was saved after the last good
    state."""


def model_generators(model) -> list[KeyedRandom]:
    """The distinct keyed generators the model's dropout layers draw masks from, in order."""
    seen, gens = set(), []
    for _, layer in model.named_layers():
        if isinstance(layer, Dropout) and id(layer.rng) not in seen:
            seen.add(id(layer.rng))
            gens.append(layer.rng)
    return gens


def train_step(model, optimizer, x, y, loss_fn=None, sync: bool = True):
    """One step of gradient descent on the batch (x, y) -> (loss, correctly classified).

    sync=True:  Python numbers. Raises TrainingDiverged, before any weight changes, when
                the loss is not finite -- which means waiting for the device to finish.
    sync=False: 0-d arrays where the batch lives, and nothing waits: the caller checks the
                loss when it reads it back (the Trainer: every PROGRESS_EVERY steps, and
                always before a checkpoint).
    """
    loss_fn = loss_fn or SoftmaxCrossEntropy()
    model.train()
    logits = model.forward(x, training=True)
    loss = loss_fn.forward(logits, y, sync=sync)
    if sync and not math.isfinite(loss):
        raise TrainingDiverged(f"the loss became {loss}")
    model.backward(loss_fn.backward())
    optimizer.step()
    correct = correct_counts(logits, y, 1)[0]      # argmax, no sort
    return (loss, int(correct)) if sync else (loss, correct)


class Trainer:
    """Runs epochs, scores them, writes last.npz, best.npz and metrics.csv to ``run_dir``.

    ``facts`` (minivgg.checkpoint.RunFacts) is saved in every checkpoint: the model
    settings, classes, normalisation and configuration that eval and predict rebuild from.
    ``progress_every``: steps between reads of the running sums from the device (the
    progress bar's figures and the NaN check); the end of an epoch and every checkpoint
    read them too, and the first step, so the first loss shows at once. Each read waits
    for the device: those are the only syncs of training.
    """

    def __init__(self, model, optimizer, schedule, train_loader, run_dir, epochs: int, *,
                 val_loader=None, test_loader=None, facts: RunFacts | None = None,
                 progress: bool = True, log=print, progress_every: int = PROGRESS_EVERY):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.train_loader, self.val_loader, self.test_loader = train_loader, val_loader, \
            test_loader
        self.run_dir, self.epochs = Path(run_dir), int(epochs)
        self.facts = facts or RunFacts(model.spec)
        self.progress, self.log = progress, log
        # labels checked once for the data set: no per-batch check, which would wait
        self.loss_fn = SoftmaxCrossEntropy(
            check_labels=not labels_fit(train_loader, model.settings.num_classes))
        self.generators = model_generators(model)
        self.progress_every = max(int(progress_every), 1)
        self.epoch, self.batch = 0, 0            # position: the next batch to train on
        self.sums = {"loss": 0.0, "correct": 0, "seen": 0}   # the current epoch so far
        self.running = None          # the same sums on the device, ahead of self.sums
        self.checked_batch = 0       # the batches up to this one had a finite loss
        self.first_loss = None       # the run's first loss, logged when it is read back
        self.history: list[dict] = []
        self.best_top1, self.best_epoch, self.best_step = -1.0, None, None
        self.elapsed, self.global_step = 0.0, 0
        self.stop_requested = 0                  # the signal that asked to stop, if any
        self.last_test = None                    # the last test evaluation, predictions too

    @classmethod
    def for_run(cls, run, run_dir, progress: bool = True, log=print) -> Trainer:
        """A trainer for a run from minivgg.run.build_run."""
        return cls(run.model, run.optimizer, run.schedule, run.train_loader, run_dir,
                   run.config["epochs"], val_loader=run.val_loader,
                   test_loader=run.test_loader, facts=run.facts, progress=progress, log=log)

    # -- one step -------------------------------------------------------------------------
    def train_step(self, x, y):
        """One step; the loss and the correct count stay on the device (0-d arrays)."""
        for g in self.generators:                 # dropout masks keyed by (seed, epoch, step)
            g.at(self.epoch, self.batch)
        return train_step(self.model, self.optimizer, x, y, self.loss_fn, sync=False)

    def _kept(self) -> str:
        last = self.run_dir / "last.npz"
        return (f"the last good checkpoint {last} (after epoch {self.epoch}) is unchanged"
                if last.exists() else "no checkpoint had been written yet")

    # -- the running sums: on the device, read back now and then ---------------------------
    def _accumulate(self, loss, correct, n: int) -> None:
        """Add a step's loss * n and correct count to the device sums (no sync)."""
        if self.running is None:         # continue from the host's figures, on loss's device
            xp = get_array_module(loss)
            self.running = (xp.full_like(loss, self.sums["loss"], dtype=xp.float64),
                            xp.full_like(loss, self.sums["correct"], dtype=xp.int64))
        loss_sum, correct_sum = self.running
        loss_sum += loss.astype(loss_sum.dtype) * n     # float64, as the host summed before
        correct_sum += correct
        self.sums["seen"] += n

    def _collect(self) -> None:
        """Read the device sums back into ``self.sums`` (a sync) and check the loss.

        Raises TrainingDiverged if the loss sum is NaN or infinite: this runs before every
        checkpoint, so a non-finite loss is never saved.
        """
        if self.running is None:
            return
        self.sums["loss"], self.sums["correct"] = float(self.running[0]), int(self.running[1])
        if self.first_loss is not None:
            self._first_loss(float(self.first_loss), self.model.settings.num_classes)
            self.first_loss = None
        if not math.isfinite(self.sums["loss"]):
            a, b = self.checked_batch + 1, self.batch
            where = f"batch {b}" if a == b else f"batches {a}-{b}"
            raise TrainingDiverged(
                f"diverged: the loss became {self.sums['loss']} at epoch {self.epoch + 1}, in "
                f"{where} (lr {self.optimizer.lr:.4g}); training stopped and {self._kept()}. "
                f"{ADVICE}")
        self.checked_batch = self.batch

    # -- the loop -------------------------------------------------------------------------
    def fit(self, on_step=None) -> dict:
        """Train until ``epochs``; Ctrl-C or SIGTERM stops after the current step, saved.

        ``on_step(trainer)`` is called after every step (tests use it to interrupt).
        """
        previous = self._install_signal_handlers()
        try:
            while self.epoch < self.epochs:
                if not self._run_epoch(on_step):
                    self.save()
                    self.log(f"interrupted at epoch {self.epoch + 1}, batch {self.batch}; "
                             f"saved {self.run_dir / 'last.npz'}. Continue with: minivgg "
                             f"train --resume {self.run_dir}")
                    return {"status": "interrupted", "history": self.history}
                self._end_epoch()
                if self.stop_requested and self.epoch < self.epochs:
                    self.log(f"interrupted after epoch {self.epoch}; saved "
                             f"{self.run_dir / 'last.npz'}")
                    return {"status": "interrupted", "history": self.history}
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return {"status": "done", "history": self.history}

    def _run_epoch(self, on_step) -> bool:
        """Train the rest of the current epoch; False if stopped by a signal mid-epoch."""
        from tqdm import tqdm  # here, not at the top: importing tqdm costs 20 ms of start-up

        loader, n = self.train_loader, len(self.train_loader)
        loader.set_epoch(self.epoch)
        bar = tqdm(total=n, initial=self.batch, disable=not self.progress, leave=False,
                   desc=f"epoch {self.epoch + 1}/{self.epochs}", unit="batch")
        start, start_seen, first = time.perf_counter(), self.sums["seen"], self.batch
        self.checked_batch = self.batch
        try:
            for i, (x, y) in enumerate(loader):
                if i < self.batch:                       # resuming: these are done already
                    continue
                self.optimizer.lr = self.schedule.lr(self.epoch + i / n)
                loss, correct = self.train_step(x, y)
                if self.global_step == 0:
                    self.first_loss = loss
                self.batch, self.global_step = i + 1, self.global_step + 1
                self._accumulate(loss, correct, len(y))
                if self.batch % self.progress_every == 0 or self.first_loss is not None:
                    # the only sync of the loop (and once after the run's first step)
                    self._collect()
                    self._show(bar, time.perf_counter() - start, start_seen, first, n)
                bar.update(1)
                if on_step is not None:
                    on_step(self)
                if self.stop_requested and self.batch < n:
                    self.elapsed += time.perf_counter() - start
                    return False
            self._collect()                              # the epoch's work, finished
        finally:
            bar.close()
        self.elapsed += time.perf_counter() - start
        return True

    def _show(self, bar, now: float, start_seen: int, first: int, n: int) -> None:
        """The progress bar's figures, from the sums just read back."""
        s = self.sums
        rate = (s["seen"] - start_seen) / max(now, 1e-9)
        bar.set_postfix_str(f"loss {s['loss'] / s['seen']:.3f}, acc "
                            f"{100 * s['correct'] / s['seen']:.1f}%, {rate:.0f} img/s, "
                            f"{self._time_left(now, self.batch - first, self.batch, n)} left",
                            refresh=False)

    def _first_loss(self, loss: float, k: int) -> None:
        self.log(f"first loss {loss:.4f}; ln({k}) = {math.log(k):.4f} is where an untrained "
                 "network that spreads its bets evenly over the classes starts")

    def _time_left(self, now: float, timed: int, done: int, n: int) -> str:
        """Time left for the whole run, from this session's time per batch."""
        per_batch = now / max(timed, 1)
        left = per_batch * ((n - done) + n * (self.epochs - self.epoch - 1))
        return time.strftime("%H:%M:%S", time.gmtime(left))

    def _score(self, split: str, loader) -> dict:
        result = evaluate(self.model, loader, predictions=(split == "test"))
        if split == "test":        # the figures of a finished run reuse the last epoch's
            self.last_test = result

        if not math.isfinite(result["loss"]):          # the last update broke the weights
            raise TrainingDiverged(
                f"diverged: the {SPLIT_NAMES[split]} loss became {result['loss']} after "
                f"epoch {self.epoch + 1} (lr {self.optimizer.lr:.4g}); training stopped and "
                f"nothing of this epoch was saved. {ADVICE}")
        return result

    def _end_epoch(self) -> None:
        t0 = time.perf_counter()
        scores = {split: self._score(split, loader) for split, loader in
                  (("val", self.val_loader), ("test", self.test_loader)) if loader is not None}
        self.elapsed += time.perf_counter() - t0
        s = self.sums
        row = {"epoch": self.epoch + 1, "lr": self.optimizer.lr,
               "train_loss": s["loss"] / max(s["seen"], 1),
               "train_top1": 100.0 * s["correct"] / max(s["seen"], 1)}
        if "val" in scores:
            row.update(val_loss=scores["val"]["loss"], val_top1=scores["val"]["top1"])
        if "test" in scores:
            row.update(test_loss=scores["test"]["loss"], test_top1=scores["test"]["top1"],
                       test_top5=scores["test"]["top5"])
        row["elapsed_s"] = round(self.elapsed, 2)
        selected = scores["val"]["top1"] if "val" in scores else None
        improved = selected is None or selected > self.best_top1     # none: the last epoch
        self.schedule.end_epoch(selected)
        self.history.append(row)
        self.epoch, self.batch = self.epoch + 1, 0
        self.sums, self.running = {"loss": 0.0, "correct": 0, "seen": 0}, None
        if improved:
            self.best_top1 = selected if selected is not None else self.best_top1
            self.best_epoch, self.best_step = self.epoch, self.global_step
        self.save(also_best=improved)
        self.write_metrics()
        self.log(self._epoch_line(row) + ("  (best)" if improved and selected is not None
                                          else ""))

    def _epoch_line(self, row: dict) -> str:
        line = (f"epoch {row['epoch']}/{self.epochs}: train loss {row['train_loss']:.4f} acc "
                f"{row['train_top1']:.2f}%")
        if "val_top1" in row:
            line += f" | val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}%"
        if "test_top1" in row:
            line += f" | test top-1 {row['test_top1']:.2f}% top-5 {row['test_top5']:.2f}%"
        return line + f" | lr {row['lr']:.4g} | {self.elapsed:.0f} s"

    def write_metrics(self) -> None:
        """metrics.csv, one row per finished epoch (minivgg.distributed: rank 0 only)."""
        files.write_csv(self.run_dir / "metrics.csv", self.history)

    # -- checkpoints ----------------------------------------------------------------------
    def _progress(self) -> Progress:
        return Progress(self.epoch, self.batch, self.global_step, self.sums, self.history,
                        self.best_top1, self.best_epoch, self.best_step, self.elapsed,
                        self.schedule.state_dict(), checkpoint.rng_states(self.generators))

    def save(self, also_best: bool = False) -> None:
        """Write last.npz (and then best.npz); refuse, stopping the run, if anything to be
        saved is NaN or infinite -- the checkpoints on disk then stay the last good ones."""
        self._collect()                     # the sums it records: read back and checked
        try:
            data = checkpoint.encode_checkpoint(self.model.state_dict(),
                                                self.optimizer.state_dict(), self.facts,
                                                self._progress())
        except NonFiniteState as exc:
            raise TrainingDiverged(
                f"diverged: at epoch {self.epoch + 1}, batch {self.batch} (lr "
                f"{self.optimizer.lr:.4g}) {exc}; training stopped and {self._kept()}. "
                f"{ADVICE}") from None
        files.atomic_write_bytes(self.run_dir / "last.npz", data)
        if also_best:
            files.atomic_write_bytes(self.run_dir / "best.npz", data)

    def restore(self, path) -> checkpoint.Checkpoint:
        """Load model, optimizer, schedule, generators and position from a checkpoint.

        The model settings saved in it must equal this trainer's; restoring the run
        folder's own last.npz also repairs best.npz and metrics.csv (runfolder.repair).
        """
        from minivgg.models import VGGSettings
        from minivgg.runfolder import repair
        ckpt = checkpoint.read_checkpoint(path)
        saved = VGGSettings.from_dict(ckpt.facts.settings)
        if saved != self.model.settings:
            raise files.RunFileError(
                f"{ckpt.path}: saved for {saved}, but the rebuilt model is "
                f"{self.model.settings}; the run's config.json no longer matches it")
        self.model.load_state_dict(ckpt.model_state)
        self.optimizer.load_state_dict(ckpt.optim_state)
        p = ckpt.progress
        self.schedule.load_state_dict(p.schedule)
        checkpoint.set_rng_states(self.generators, p.rng_states)
        self.epoch, self.batch, self.sums, self.history = p.epoch, p.batch, p.sums, p.history
        self.running = self.first_loss = None        # the device sums restart from p.sums
        self.best_top1, self.best_epoch, self.best_step = p.best_top1, p.best_epoch, p.best_step
        self.elapsed, self.global_step = p.elapsed_s, p.global_step
        if Path(path).resolve().parent == self.run_dir.resolve():
            repair(self.run_dir, ckpt, self.log)
        return ckpt

    # -- Ctrl-C and SIGTERM ---------------------------------------------------------------
    def _install_signal_handlers(self) -> dict:
        """First Ctrl-C (or SIGTERM): stop after this step and save. Second: abort at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = signum
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self.log(f"\n{name}: stopping after this step and saving a checkpoint "
                     "(send it again to abort without saving)")

        return {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
