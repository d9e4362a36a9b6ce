"""Learning-rate schedules: the learning rate as a function of training progress.

A schedule maps ``t``, the number of epochs done so far (fractional within an epoch: after
batch i of n in epoch e, t = e + i/n), to a multiple of the base learning rate. The
training loop sets ``optimizer.lr = schedule.lr(t)`` before every step, so a schedule is
a pure function of t -- resuming a run at any step gives the same rates -- except
reduce-on-plateau, which remembers the validation accuracies it has seen (its
``state_dict`` holds that memory).

    Constant()                      lr
    Step(step=30, gamma=0.1)        lr * gamma ** floor(epoch / step)
    MultiStep([20, 30], gamma=0.1)  lr * gamma ** (number of milestones passed)
    Cosine(epochs, min_factor=0)    lr * (m + (1 - m) * (1 + cos(pi * t / epochs)) / 2)
    Warmup(inner, epochs=1)         inner, ramped up linearly from lr/n over the first epochs
    Plateau(factor=0.1, patience)   the paper: divide by 10 when validation accuracy stops
                                    improving (Simonyan & Zisserman, Sect. 3.1)
"""

from __future__ import annotations

import math


class Schedule:
    """Base class. Subclasses define ``factor(t)``; stateful ones override the rest."""

    def __init__(self, base_lr: float):
        if base_lr <= 0:
            raise ValueError(f"{type(self).__name__}: base_lr must be > 0; got {base_lr}")
        self.base_lr = float(base_lr)

    def factor(self, t: float) -> float:
        raise NotImplementedError

    def lr(self, t: float) -> float:
        return self.base_lr * self.factor(t)

    def end_epoch(self, metric: float | None = None) -> None:
        """Called once after each epoch's evaluation with the validation accuracy."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__}.load_state_dict: a stateless schedule "
                             f"got state {sorted(state)}")


class Constant(Schedule):
    def factor(self, t):
        return 1.0

    def __repr__(self):
        return f"Constant(lr={self.base_lr})"


class Step(Schedule):
    """Multiply by ``gamma`` every ``step`` whole epochs."""

    def __init__(self, base_lr, step: int = 30, gamma: float = 0.1):
        super().__init__(base_lr)
        if step < 1:
            raise ValueError(f"Step: step must be >= 1 epoch; got {step}")
        self.step, self.gamma = int(step), float(gamma)

    def factor(self, t):
        return self.gamma ** (math.floor(t + 1e-9) // self.step)

    def __repr__(self):
        return f"Step(lr={self.base_lr}, step={self.step}, gamma={self.gamma})"


class MultiStep(Schedule):
    """Multiply by ``gamma`` at each milestone epoch (e.g. [50, 75])."""

    def __init__(self, base_lr, milestones=(30, 60), gamma: float = 0.1):
        super().__init__(base_lr)
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)

    def factor(self, t):
        passed = sum(1 for m in self.milestones if t + 1e-9 >= m)
        return self.gamma ** passed

    def __repr__(self):
        return f"MultiStep(lr={self.base_lr}, milestones={self.milestones}, gamma={self.gamma})"


class Cosine(Schedule):
    """Half a cosine from lr down to ``min_factor * lr`` over ``epochs`` (per step, smooth)."""

    def __init__(self, base_lr, epochs: float, min_factor: float = 0.0):
        super().__init__(base_lr)
        if epochs <= 0:
            raise ValueError(f"Cosine: epochs must be > 0; got {epochs}")
        self.epochs, self.min_factor = float(epochs), float(min_factor)

    def factor(self, t):
        progress = min(max(t / self.epochs, 0.0), 1.0)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    def __repr__(self):
        return f"Cosine(lr={self.base_lr}, epochs={self.epochs}, min_factor={self.min_factor})"


class Warmup(Schedule):
    """Scale another schedule by a linear ramp over the first ``epochs`` epochs.

    The ramp is min(1, (t + 1/steps) / epochs) with ``steps`` the batches per epoch, so the
    very first step already moves (lr/n, not 0). Large batches and large learning rates
    diverge without it (Goyal et al., 2017).
    """

    def __init__(self, inner: Schedule, epochs: float = 1.0, steps_per_epoch: int = 1):
        super().__init__(inner.base_lr)
        self.inner, self.epochs, self.steps_per_epoch = inner, float(epochs), steps_per_epoch

    def factor(self, t):
        ramp = 1.0 if self.epochs <= 0 else min(1.0, (t + 1 / self.steps_per_epoch) / self.epochs)
        return ramp * self.inner.factor(t)

    def end_epoch(self, metric=None):
        self.inner.end_epoch(metric)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)

    def __repr__(self):
        return f"Warmup({self.inner!r}, epochs={self.epochs})"


class Plateau(Schedule):
    """Reduce on plateau: multiply by ``factor`` after ``patience`` epochs without a new best.

    The paper's rule ("decreased by a factor of 10 when the validation set accuracy stopped
    improving"). ``metric`` is an accuracy: higher is better; an epoch counts as an
    improvement when it beats the best by more than ``threshold``. After a reduction the
    count starts again; the factor never takes lr below ``min_lr``.
    """

    def __init__(self, base_lr, factor: float = 0.1, patience: int = 2,
                 threshold: float = 1e-4, min_lr: float = 0.0):
        super().__init__(base_lr)
        if not 0.0 < factor < 1.0:
            raise ValueError(f"Plateau: factor must be in (0, 1); got {factor}")
        self.reduce_by, self.patience = float(factor), int(patience)
        self.threshold, self.min_lr = float(threshold), float(min_lr)
        self.scale, self.best, self.bad_epochs, self.reductions = 1.0, None, 0, 0

    def factor(self, t):
        return self.scale

    def end_epoch(self, metric=None):
        if metric is None:
            raise ValueError("Plateau.end_epoch: needs the validation accuracy of the epoch")
        if self.best is None or metric > self.best + self.threshold:
            self.best, self.bad_epochs = float(metric), 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            new_scale = max(self.scale * self.reduce_by, self.min_lr / self.base_lr)
            if new_scale < self.scale:
                self.scale, self.reductions = new_scale, self.reductions + 1
            self.bad_epochs = 0

    def state_dict(self):
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs,
                "reductions": self.reductions}

    def load_state_dict(self, state):
        self.scale, self.best = float(state["scale"]), state["best"]
        self.bad_epochs, self.reductions = int(state["bad_epochs"]), int(state["reductions"])

    def __repr__(self):
        return (f"Plateau(lr={self.base_lr}, factor={self.reduce_by}, "
                f"patience={self.patience}, scale={self.scale})")


SCHEDULES = ("constant", "step", "multistep", "cosine", "plateau")


def make_schedule(name: str, base_lr: float, epochs: int, steps_per_epoch: int = 1,
                  warmup: float = 0.0, step: int = 30, milestones=(), gamma: float = 0.1,
                  patience: int = 2, min_factor: float = 0.0) -> Schedule:
    """Build a schedule by name (the CLI's --schedule), optionally with linear warm-up."""
    if name == "constant":
        schedule = Constant(base_lr)
    elif name == "step":
        schedule = Step(base_lr, step, gamma)
    elif name == "multistep":
        ms = list(milestones) or [int(epochs * 0.5), int(epochs * 0.75)]
        schedule = MultiStep(base_lr, ms, gamma)
    elif name == "cosine":
        schedule = Cosine(base_lr, epochs, min_factor)
    elif name == "plateau":
        schedule = Plateau(base_lr, gamma, patience)
    else:
        raise ValueError(f"make_schedule: unknown schedule {name!r}; expected one of "
                         f"{SCHEDULES}")
    return Warmup(schedule, warmup, steps_per_epoch) if warmup > 0 else schedule
