"""Hostile moments for a run's files: a kill between two writes, SIGTERM, a full disk,
a run that diverges. The kill is injected at the exact write (the writer raises at its
n-th call), the run is resumed in fresh objects, and it must end as a run that was never
interrupted: the same weights, best.npz and metrics, bit for bit on the CPU. Nothing
non-finite is ever saved."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from minivgg import files
from minivgg.checkpoint import read_checkpoint
from minivgg.cli import main
from minivgg.files import read_csv
from minivgg.run import DEFAULTS, build_run
from minivgg.train import Trainer, TrainingDiverged

CONFIG = {**DEFAULTS, "dataset": "shapes", "limit": 112, "model": "8,M,16,M", "hidden": [16],
          "batch_size": 32, "epochs": 3, "backend": "numba", "lr": 0.05}
QUICK = ["--width", "0.125", "--batch-size", "16", "--no-progress", "--backend", "numba",
         "--no-plots"]


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, nothing after it runs."""


def trainer(run_dir, **changes) -> Trainer:
    return Trainer.for_run(build_run({**CONFIG, **changes}), run_dir, progress=False,
                           log=lambda *a: None)


def kill_at(monkeypatch, name: str, nth: int) -> None:
    """Make the nth atomic write of the file ``name`` die before it starts."""
    real, seen = files.atomic_write_bytes, Counter()

    def write(path, data):
        seen[Path(path).name] += 1
        if Path(path).name == name and seen[name] == nth:
            raise Killed(f"{name} #{nth}")
        real(path, data)
    monkeypatch.setattr(files, "atomic_write_bytes", write)


def same_rows(a: list, b: list) -> bool:
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]
    return strip(a) == strip(b)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: the run as it goes without interruption."""
    run_dir = tmp_path_factory.mktemp("straight")
    t = trainer(run_dir)
    t.fit()
    return t, run_dir


KILLS = [("best.npz", 1), ("metrics.csv", 1), ("metrics.csv", 2), ("last.npz", 2),
         ("last.npz", 3)]


@pytest.mark.parametrize("name,nth", KILLS, ids=[f"{n}#{k}" for n, k in KILLS])
def test_a_kill_between_writes_is_repaired_by_resume(name, nth, straight, tmp_path,
                                                     monkeypatch):
    reference, reference_dir = straight
    kill_at(monkeypatch, name, nth)
    with pytest.raises(Killed):
        trainer(tmp_path).fit()
    monkeypatch.undo()
    last = read_checkpoint(tmp_path / "last.npz").progress
    if name == "best.npz":                      # last.npz says best is epoch 1; it is missing
        assert last.best_epoch == 1 and not (tmp_path / "best.npz").exists()
    if name == "metrics.csv":                   # a row short
        table = tmp_path / "metrics.csv"
        rows = read_csv(table) if table.exists() else []
        assert len(last.history) == nth and len(rows) == nth - 1
    resumed = trainer(tmp_path)
    resumed.restore(tmp_path / "last.npz")
    assert len(read_csv(tmp_path / "metrics.csv")) == len(last.history)   # repaired at once
    assert resumed.fit()["status"] == "done"
    for key, value in reference.model.state_dict().items():
        np.testing.assert_array_equal(value, resumed.model.state_dict()[key], err_msg=key)
    best, expected = (read_checkpoint(d / "best.npz") for d in (tmp_path, reference_dir))
    assert best.progress.epoch == expected.progress.epoch
    for key, value in expected.model_state.items():
        np.testing.assert_array_equal(value, best.model_state[key], err_msg=key)
    assert same_rows(read_csv(tmp_path / "metrics.csv"), read_csv(reference_dir / "metrics.csv"))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_sigterm_saves_and_stops_like_ctrl_c(straight, tmp_path):
    reference, _ = straight

    def terminate(t):
        if t.global_step == 2:                       # mid-epoch
            os.kill(os.getpid(), signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)
    first = trainer(tmp_path)
    assert first.fit(on_step=terminate)["status"] == "interrupted"
    assert first.stop_requested == signal.SIGTERM and (first.epoch, first.batch) == (0, 2)
    assert signal.getsignal(signal.SIGTERM) is before
    resumed = trainer(tmp_path)
    resumed.restore(tmp_path / "last.npz")
    resumed.fit()
    for key, value in reference.model.state_dict().items():
        np.testing.assert_array_equal(value, resumed.model.state_dict()[key], err_msg=key)


def test_sigterm_to_the_command_saves_and_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "minivgg.cli", "train", "--dataset", "shapes", "--limit",
         "400", "--epochs", "200", "--out", str(out), *QUICK], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("first loss"):
                proc.send_signal(signal.SIGTERM)
                break
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM: stopping after this step" in stdout and "Traceback" not in stderr
    progress = read_checkpoint(out / "last.npz").progress
    assert progress.epoch < 200 and not (out / ".lock").exists()


def test_a_full_disk_is_one_line_and_keeps_what_was_written(tmp_path, capsys, monkeypatch):
    out, writes = tmp_path / "run", []

    def disk_full_after_config(f, data):
        writes.append(len(data))
        if len(writes) > 1:                           # config.json is written; then no room
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(data)
    monkeypatch.setattr(files, "_write_all", disk_full_after_config)
    code = main(["train", "--dataset", "shapes", "--limit", "64", "--epochs", "2", "--out",
                 str(out), *QUICK])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "last.npz" in err and "No space left on device" in err and "free some disk" in err
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]      # no .tmp, no .lock


@pytest.mark.parametrize("flags", [["--lr", "1e3"],
                                   ["--schedule", "multistep", "--milestones", "1",
                                    "--gamma", "1e6"]], ids=["lr 1e3", "gamma 1e6"])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_ends_with_a_clear_message_and_only_finite_checkpoints(flags, tmp_path,
                                                                          capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "shapes", "--limit", "64", "--epochs", "4", "--out",
                 str(out), *QUICK, *flags])
    err = capsys.readouterr().err
    assert code == 1 and "diverged" in err and "--lr" in err and "Traceback" not in err
    for path in out.glob("*.npz"):
        ckpt = read_checkpoint(path)
        for name, value in {**ckpt.model_state, **ckpt.optim_state}.items():
            assert np.isfinite(value).all(), (path.name, name)
    if "--gamma" in flags:                          # epoch 1 ran at lr 0.05: its state is kept
        assert read_checkpoint(out / "last.npz").progress.epoch == 1


@pytest.mark.parametrize("what", ["momentum", "running_var"])
def test_non_finite_state_that_leaves_the_loss_finite_is_never_saved(what, tmp_path):
    t = trainer(tmp_path, epochs=2)
    n = len(t.train_loader)

    def poison(t):
        if (t.epoch, t.batch) == (1, n):            # the last step of epoch 2
            if what == "momentum":
                next(iter(t.optimizer.buffers["momentum"].values()))[...] = np.inf
            else:
                t.model["features"][1].running_var[...] = np.inf     # BN: eval stays finite
    epoch_one = None

    def watch(t):
        nonlocal epoch_one
        if t.epoch == 1 and epoch_one is None:
            epoch_one = (tmp_path / "last.npz").read_bytes()
        poison(t)
    with pytest.raises(TrainingDiverged, match=f"diverged: .*{what}.*unchanged"):
        t.fit(on_step=watch)
    assert (tmp_path / "last.npz").read_bytes() == epoch_one


def test_a_second_ctrl_c_aborts_at_once_without_a_traceback(tmp_path, capsys, monkeypatch):
    import minivgg.train as train_module
    real = train_module.train_step

    def interrupted_twice(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)          # stop after this step, please
        os.kill(os.getpid(), signal.SIGINT)          # no: now
        return real(*args, **kwargs)
    monkeypatch.setattr(train_module, "train_step", interrupted_twice)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)
    assert main(["train", "--dataset", "shapes", "--limit", "64", "--epochs", "2", "--out",
                 str(out), *QUICK]) == 130
    err = capsys.readouterr().err
    assert "aborted" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]    # lock released
    assert signal.getsignal(signal.SIGINT) is before
