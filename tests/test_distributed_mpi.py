"""``mpirun -n 2 minivgg train``, for real: two processes, MPI between them.

Each test starts its own launcher (a subprocess with a timeout) on a tiny run: the shapes
data set, a two-convolution network, the NumPy kernels, one thread per rank. They need
mpi4py and an ``mpiexec``: the ``mpi`` extra brings both (.ci/run installs it). Where they
are missing the tests skip -- except in CI (CI=true), where they fail: there they must run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from minivgg.checkpoint import read_checkpoint

TIMEOUT_S = 240
TINY = ["--dataset", "shapes", "--model", "8,M,16,M", "--width", "1", "--batch-size", "64",
        "--eval-batch-size", "64", "--backend", "numpy", "--seed", "3", "--no-plots",
        "--no-progress", "--lr", "0.02"]


def mpiexec() -> str | None:
    """The launcher of mpi4py's MPI: beside this Python first (the mpi extra's), then PATH."""
    here = Path(sys.executable).parent
    for name in ("mpiexec", "mpirun"):
        if (here / name).is_file():
            return str(here / name)
    return shutil.which("mpiexec") or shutil.which("mpirun")


def _missing() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[mpi]')"
    if mpiexec() is None:
        return "no mpiexec found (pip install -e '.[mpi]' brings MPICH's)"
    return None


@pytest.fixture(scope="module")
def launcher():
    problem = _missing()
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the MPI tests must run in CI: {problem}")
        pytest.skip(problem)
    return mpiexec()


def env() -> dict:
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                "NUMBA_NUM_THREADS")}
    return {**os.environ, **threads, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}


def single(args, timeout=TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minivgg.cli", "train", *args], env=env(),
                          capture_output=True, text=True, timeout=timeout)


def kill_all(job: subprocess.Popen) -> None:
    """End the launcher and every rank it started (they share its process group)."""
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def ranks(launcher, n, args, timeout=TIMEOUT_S) -> subprocess.CompletedProcess:
    cmd = [launcher, "-n", str(n), sys.executable, "-m", "minivgg.cli", "train", *args]
    job = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        out, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all(job)
        job.communicate()
        raise
    return subprocess.CompletedProcess(cmd, job.returncode, out, err)


def weights(run_dir: Path) -> dict:
    return read_checkpoint(run_dir / "last.npz").model_state


def max_rel_diff(a: dict, b: dict, floor: float = 1e-3) -> float:
    """The largest difference of two states, each tensor relative to its largest value --
    or to ``floor`` for tensors that are rounding noise around zero: a convolution's bias in
    front of batch norm, whose gradient is exactly zero, holds only that."""
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), floor)) for k in b)


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"


@pytest.mark.parametrize("bn", [["--no-batch-norm"], ["--batch-norm", "--sync-bn"]],
                         ids=["no-batch-norm", "sync-bn"])
def test_two_ranks_end_the_epoch_with_the_single_process_weights(launcher, tmp_path, bn):
    args = [*TINY, "--limit", "300", "--epochs", "1", *bn]
    if "--sync-bn" in bn:          # the Numba kernels sum in float64, as SyncBatchNorm2D does;
        args += ["--backend", "numba"]   # the float32 reference's sums differ by ~1e-5
    two = ranks(launcher, 2, [*args, "--out", str(tmp_path / "two")])
    check(two)
    assert "data parallel: 2 ranks (MPIComm), global batch 64 = 32 per rank" in two.stdout
    assert two.stdout.count("epoch 1/1:") == 1                     # rank 0 alone prints
    one = single([*args, "--out", str(tmp_path / "one")])
    check(one)
    got, want = weights(tmp_path / "two"), weights(tmp_path / "one")
    assert got.keys() == want.keys()
    assert max_rel_diff(got, want) <= 1e-4                          # float32 rounding
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one").iterdir())       # the same run folder


def test_per_rank_batch_norm_differs_from_the_single_process(launcher, tmp_path):
    """Without --sync-bn two ranks normalise 32 images each: not the single process's."""
    args = [*TINY, "--limit", "300", "--epochs", "1", "--batch-norm"]
    check(ranks(launcher, 2, [*args, "--out", str(tmp_path / "two")]))
    check(single([*args, "--out", str(tmp_path / "one")]))
    assert max_rel_diff(weights(tmp_path / "two"), weights(tmp_path / "one")) > 1e-3


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    for pid in _descendants(launcher_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        marks = {f"PMI_RANK={rank}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
        if b"minivgg.cli" in cmdline and marks & set(environ):
            return pid
    return None


def test_a_killed_rank_ends_the_job_and_resume_continues_exactly(launcher, tmp_path):
    args = [*TINY, "--limit", "700", "--epochs", "3", "--no-batch-norm"]
    cut = tmp_path / "cut"
    job = subprocess.Popen([launcher, "-n", "2", sys.executable, "-m", "minivgg.cli", "train",
                            *args, "--out", str(cut)], env=env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    watchdog = threading.Timer(TIMEOUT_S, kill_all, args=(job,))    # never hang the test suite
    watchdog.start()
    try:
        seen = []
        for line in job.stdout:                      # wait for epoch 1 to be saved
            seen.append(line)
            if line.startswith("epoch 1/3:"):
                break
        assert any(s.startswith("epoch 1/3:") for s in seen), "".join(seen)
        victim = _rank_pid(job.pid, 1)
        assert victim is not None, "rank 1's process not found"
        os.kill(victim, signal.SIGKILL)              # mid-epoch 2
        killed = time.monotonic()
        rest, _ = job.communicate(timeout=60)
        ended_after = time.monotonic() - killed
    finally:
        watchdog.cancel()
        kill_all(job)                                # and any rank left behind
        job.wait()
    assert job.returncode != 0, "".join(seen) + rest
    assert ended_after < 20, f"the job took {ended_after:.1f} s to end after the kill"
    saved = read_checkpoint(cut / "last.npz")        # intact, and a complete epoch
    assert (saved.progress.epoch, saved.progress.batch) in ((1, 0), (2, 0))

    resumed = ranks(launcher, 2, ["--resume", str(cut)])
    check(resumed)
    assert "resuming" in resumed.stdout and "epoch 3/3:" in resumed.stdout
    straight = ranks(launcher, 2, [*args, "--out", str(tmp_path / "straight")])
    check(straight)
    got, want = weights(cut), weights(tmp_path / "straight")
    assert all(np.array_equal(got[k], want[k]) for k in want), max_rel_diff(got, want)


def test_a_refused_option_is_reported_once_by_rank_0(launcher, tmp_path):
    """A refused option is decided once (rank 0) and reported once, exit status 2."""
    result = ranks(launcher, 2, [*TINY, "--limit", "100", "--batch-size", "1",
                                 "--out", str(tmp_path / "r")], timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("--batch-size 1 is the global batch") == 1
