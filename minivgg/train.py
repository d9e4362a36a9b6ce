"""The training loop: batches, forward, loss, backward, update; evaluation after each epoch.

    trainer = Trainer(model, optimizer, schedule, train_loader, test_loader, run_dir,
                      epochs=15, meta={"classes": ..., "normalize": ..., "spec": ...})
    result = trainer.fit()          # {"status": "done" | "interrupted", "history": [...]}

One step, for a batch (x, y):

    logits = model.forward(x)                  (N, classes)
    loss   = cross_entropy(logits, y)          a number; must be finite
    model.backward(loss_fn.backward())         fills every Parameter.grad
    optimizer.step()                           w <- w - lr * (...), in place

Exact resumption: the loader draws epoch e's order and augmentations from (seed, e), the
dropout masks come from generators whose states are saved, and the checkpoint records how
many batches of the current epoch are done. ``Trainer.restore`` puts all of it back, so on
the CPU an interrupted and resumed run ends with the same weights, bit for bit, as one that
ran straight through.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minivgg.backend import asnumpy, get_array_module
from minivgg.checkpoint import (
    atomic_write_bytes,
    encode_checkpoint,
    load_checkpoint,
    rng_states,
    set_rng_states,
    write_csv,
)
from minivgg.losses import SoftmaxCrossEntropy


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing was saved after the last good state."""


def model_generators(model) -> list[np.random.Generator]:
    """The distinct random generators the model's layers draw from (dropout masks), in order."""
    seen, gens = set(), []
    for _, layer in model.named_layers():
        g = getattr(layer, "rng", None)
        if isinstance(g, np.random.Generator) and id(g) not in seen:
            seen.add(id(g))
            gens.append(g)
    return gens


def count_correct(logits, labels, k: int = 5) -> tuple[int, int]:
    """How many rows have the label as the top prediction, and among the top ``k``."""
    xp = get_array_module(logits)
    k = min(k, logits.shape[1])
    top = xp.argsort(-logits, axis=1)[:, :k]                  # (N, k), best first
    hits = top == labels[:, None]
    return int(hits[:, 0].sum()), int(hits.any(axis=1).sum())


def evaluate(model, loader, predictions: bool = False) -> dict:
    """Mean loss and top-1 / top-5 accuracy (in %) over a loader, in evaluation mode.

    With ``predictions=True`` also returns "predicted" and "labels" (host int arrays).
    """
    loss_fn, n, loss_sum, top1, top5 = SoftmaxCrossEntropy(), 0, 0.0, 0, 0
    predicted, labels = [], []
    for x, y in loader:
        logits = model.forward(x, training=False)
        loss_sum += loss_fn.forward(logits, y) * len(y)
        c1, c5 = count_correct(logits, y)
        top1, top5, n = top1 + c1, top5 + c5, n + len(y)
        if predictions:
            predicted.append(asnumpy(logits.argmax(axis=1)))
            labels.append(asnumpy(y))
    if n == 0:
        raise ValueError("evaluate: the loader produced no batches")
    out = {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": n}
    if predictions:
        out["predicted"], out["labels"] = np.concatenate(predicted), np.concatenate(labels)
    return out


class Trainer:
    """Runs epochs, evaluates, writes metrics.csv, last.npz and best.npz to ``run_dir``.

    ``meta`` is saved in every checkpoint as it is (classes, normalisation, model spec,
    config): what ``minivgg eval`` and ``predict`` need to rebuild the model.
    """

    def __init__(self, model, optimizer, schedule, train_loader, test_loader, run_dir,
                 epochs: int, meta: dict | None = None, progress: bool = True, log=print):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.train_loader, self.test_loader = train_loader, test_loader
        self.run_dir, self.epochs, self.meta = Path(run_dir), int(epochs), dict(meta or {})
        self.progress, self.log = progress, log
        self.loss_fn = SoftmaxCrossEntropy()
        self.generators = model_generators(model)
        self.epoch, self.batch = 0, 0            # position: the next batch to train on
        self.sums = {"loss": 0.0, "correct": 0, "seen": 0}   # the current epoch so far
        self.history: list[dict] = []
        self.best_top1, self.elapsed, self.global_step = -1.0, 0.0, 0
        self.stop_requested = False

    # -- one step -------------------------------------------------------------------------
    def train_step(self, x, y) -> tuple[float, int]:
        logits = self.model.forward(x, training=True)
        loss = self.loss_fn.forward(logits, y)
        self.num_classes = logits.shape[1]
        if not math.isfinite(loss):
            last = self.run_dir / "last.npz"
            kept = (f"the last good checkpoint {last} (after epoch {self.epoch}) is unchanged"
                    if last.exists() else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"train: the loss became {loss} at epoch {self.epoch + 1}, batch "
                f"{self.batch + 1} (lr {self.optimizer.lr:.4g}); training stopped and "
                f"{kept}. Try a smaller --lr, a --warmup, or --batch-norm.")
        self.model.backward(self.loss_fn.backward())
        self.optimizer.step()
        return loss, count_correct(logits, y, 1)[0]

    # -- the loop -------------------------------------------------------------------------
    def fit(self, on_step=None) -> dict:
        """Train until ``epochs``; Ctrl-C stops after the current step with a checkpoint.

        ``on_step(trainer)`` is called after every step (tests use it to interrupt).
        """
        previous = self._install_sigint()
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
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return {"status": "done", "history": self.history}

    def _run_epoch(self, on_step) -> bool:
        """Train the rest of the current epoch; False if stopped by Ctrl-C mid-epoch."""
        loader, n = self.train_loader, len(self.train_loader)
        loader.set_epoch(self.epoch)
        bar = tqdm(total=n, initial=self.batch, disable=not self.progress, leave=False,
                   desc=f"epoch {self.epoch + 1}/{self.epochs}", unit="batch")
        start, start_seen, first = time.perf_counter(), self.sums["seen"], self.batch
        try:
            for i, (x, y) in enumerate(loader):
                if i < self.batch:                       # resuming: these are done already
                    continue
                self.optimizer.lr = self.schedule.lr(self.epoch + i / n)
                loss, correct = self.train_step(x, y)
                if self.global_step == 0:
                    self._first_loss(loss)
                self.batch, self.global_step = i + 1, self.global_step + 1
                s = self.sums
                s["loss"] += loss * len(y)
                s["correct"] += correct
                s["seen"] += len(y)
                now = time.perf_counter() - start
                rate = (s["seen"] - start_seen) / max(now, 1e-9)
                bar.set_postfix_str(f"loss {s['loss'] / s['seen']:.3f}, acc "
                                    f"{100 * s['correct'] / s['seen']:.1f}%, {rate:.0f} img/s, "
                                    f"{self._time_left(now, i + 1 - first, i + 1, n)} left",
                                    refresh=False)
                bar.update(1)
                if on_step is not None:
                    on_step(self)
                if self.stop_requested and self.batch < n:
                    self.elapsed += time.perf_counter() - start
                    return False
        finally:
            bar.close()
        self.elapsed += time.perf_counter() - start
        return True

    def _first_loss(self, loss: float) -> None:
        k = self.num_classes
        self.log(f"first loss {loss:.4f}; ln({k}) = {math.log(k):.4f} is where an untrained "
                 "network that spreads its bets evenly over the classes starts")

    def _time_left(self, now: float, timed: int, done: int, n: int) -> str:
        """Time left for the whole run, from this session's time per batch."""
        per_batch = now / max(timed, 1)
        left = per_batch * ((n - done) + n * (self.epochs - self.epoch - 1))
        return time.strftime("%H:%M:%S", time.gmtime(left))

    def _end_epoch(self) -> None:
        t0 = time.perf_counter()
        result = evaluate(self.model, self.test_loader)
        self.elapsed += time.perf_counter() - t0
        if not math.isfinite(result["loss"]):          # the last update broke the weights
            raise TrainingDiverged(
                f"train: the test loss became {result['loss']} after epoch {self.epoch + 1} "
                f"(lr {self.optimizer.lr:.4g}); training stopped and nothing of this epoch "
                "was saved. Try a smaller --lr, a --warmup, or --batch-norm.")
        s = self.sums
        row = {"epoch": self.epoch + 1, "lr": self.optimizer.lr,
               "train_loss": s["loss"] / max(s["seen"], 1),
               "train_top1": 100.0 * s["correct"] / max(s["seen"], 1),
               "test_loss": result["loss"], "test_top1": result["top1"],
               "test_top5": result["top5"], "elapsed_s": round(self.elapsed, 2)}
        self.history.append(row)
        self.schedule.end_epoch(result["top1"])
        self.epoch, self.batch = self.epoch + 1, 0
        self.sums = {"loss": 0.0, "correct": 0, "seen": 0}
        improved = result["top1"] > self.best_top1
        self.best_top1 = max(self.best_top1, result["top1"])
        self.save(also_best=improved)
        write_csv(self.run_dir / "metrics.csv", self.history)
        self.log(f"epoch {row['epoch']}/{self.epochs}: train loss {row['train_loss']:.4f} "
                 f"acc {row['train_top1']:.2f}% | test loss {row['test_loss']:.4f} top-1 "
                 f"{row['test_top1']:.2f}% top-5 {row['test_top5']:.2f}% | lr "
                 f"{row['lr']:.4g} | {self.elapsed:.0f} s" + ("  (best)" if improved else ""))

    # -- checkpoints ----------------------------------------------------------------------
    def state_meta(self) -> dict:
        return {**self.meta, "epoch": self.epoch, "batch": self.batch, "sums": self.sums,
                "history": self.history, "best_top1": self.best_top1,
                "elapsed_s": self.elapsed, "global_step": self.global_step,
                "schedule": self.schedule.state_dict(),
                "rng_states": rng_states(self.generators)}

    def save(self, also_best: bool = False) -> None:
        data = encode_checkpoint(self.model.state_dict(), self.optimizer.state_dict(),
                                 self.state_meta())
        atomic_write_bytes(self.run_dir / "last.npz", data)
        if also_best:
            atomic_write_bytes(self.run_dir / "best.npz", data)

    def restore(self, path) -> None:
        """Load model, optimizer, schedule, generators and position from a checkpoint."""
        model_state, optim_state, meta = load_checkpoint(path)
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optim_state)
        self.schedule.load_state_dict(meta["schedule"])
        set_rng_states(self.generators, meta["rng_states"])
        self.epoch, self.batch, self.sums = meta["epoch"], meta["batch"], meta["sums"]
        self.history, self.best_top1 = meta["history"], meta["best_top1"]
        self.elapsed, self.global_step = meta["elapsed_s"], meta["global_step"]

    # -- Ctrl-C ---------------------------------------------------------------------------
    def _install_sigint(self):
        """First Ctrl-C: stop after this step and save. Second: abort at once."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def request_stop(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            self.log("\nCtrl-C: stopping after this step and saving a checkpoint "
                     "(press Ctrl-C again to abort without saving)")

        return signal.signal(signal.SIGINT, request_stop)
