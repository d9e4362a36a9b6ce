"""Data-parallel training on one machine: 2 ranks x 1 thread against 1 process x 2 threads.

    python benchmarks/bench_mpi.py                     # VGG-A width 0.25, global batch 128
    python benchmarks/bench_mpi.py --quick             # a smoke test (seconds), no figures

Three ways to spend two cores on the same training step (same network, same global
batch B, random images, the NumPy/Numba kernels ``--backend`` picks):

    1 process x 2 threads    minivgg as usual: BLAS and Numba use both cores
    1 process x 1 thread     the baseline for the scaling
    2 ranks x 1 thread       mpiexec -n 2: each rank B/2 images, gradients Allreduced

Each configuration runs as fresh processes (``--worker`` mode of this file), warm-up
steps first, then ``--steps`` timed data-parallel steps (minivgg.distributed's
distributed_train_step; with one process its Allreduce is the identity). Rank 0 reports
images per second and the share of the step spent in the gradient Allreduce. The
configurations alternate for ``--rounds`` rounds; the table gives the median and range.
Refuses to start above --max-load (1-minute load average), as the other benchmarks.
Writes results/mpi-<cpu>-<date>.json with the machine, versions, date and load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")


# -- one configuration, in its own processes -------------------------------------------------
def worker(args) -> None:
    import numpy as np

    import minivgg as mv
    from minivgg.distributed import GradientBuffer, shard_bounds, world
    from minivgg.distributed.trainer import distributed_train_step
    from minivgg.losses import SoftmaxCrossEntropy
    from minivgg.models import vgg
    from minivgg.optim import SGD

    comm = world()
    mv.set_backend(args.backend)
    model = vgg(args.model, 10, 32, head="cifar", width=args.width, batch_norm=True, seed=0)
    optimizer = SGD(model, 0.01, momentum=0.9, weight_decay=5e-4)
    gradients = GradientBuffer(model.named_parameters(), comm)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    lo, hi = shard_bounds(args.batch, comm.rank, comm.size)
    reduce_time = [0.0]
    allreduce = gradients.allreduce

    def timed_allreduce():
        t = time.perf_counter()
        allreduce()
        reduce_time[0] += time.perf_counter() - t
    gradients.allreduce = timed_allreduce
    loss_fn = SoftmaxCrossEntropy()

    def step():
        distributed_train_step(model, optimizer, x[lo:hi], y[lo:hi], loss_fn, gradients,
                               args.batch)
    for _ in range(args.warmup):
        step()
    comm.barrier()
    reduce_time[0] = 0.0
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    comm.barrier()
    elapsed = time.perf_counter() - start
    if comm.rank == 0:
        print("RESULT " + json.dumps({
            "images_per_s": args.batch * args.steps / elapsed,
            "step_ms": 1e3 * elapsed / args.steps,
            "allreduce_ms": 1e3 * reduce_time[0] / args.steps,
            "ranks": comm.size, "gradient_mib": gradients.nbytes / 2**20}))


# -- the driver ------------------------------------------------------------------------------
def mpiexec() -> str | None:
    import shutil
    here = Path(sys.executable).parent
    for name in ("mpiexec", "mpirun"):
        if (here / name).is_file():
            return str(here / name)
    return shutil.which("mpiexec")


def run_config(ranks: int, threads: int, args) -> dict:
    env = {**os.environ, **{v: str(threads) for v in THREAD_VARIABLES}}
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--width",
           str(args.width), "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--backend", args.backend]
    if ranks > 1:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{ranks} rank(s) x {threads} thread(s) failed (exit "
                           f"{out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def machine() -> dict:
    name = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def versions() -> dict:
    found = {}
    for pkg in ("numpy", "numba", "mpi4py"):
        try:
            found[pkg] = __import__(pkg).__version__
        except ImportError:
            found[pkg] = None
    try:
        from mpi4py import MPI
        found["mpi"] = MPI.Get_library_version().splitlines()[0]
    except ImportError:
        pass
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="A")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=128, help="global batch (default: 128)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backend", default="numba", choices=("numba", "numpy"))
    p.add_argument("--max-load", type=float, default=0.3)
    p.add_argument("--quick", action="store_true", help="tiny, one round, no load check, "
                   "no results file: checks that the benchmark runs")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.width, args.batch, args.steps, args.warmup, args.rounds = 0.125, 8, 1, 1, 1
    if mpiexec() is None:
        sys.exit("bench_mpi: no mpiexec found; pip install -e '.[mpi]'")
    load = os.getloadavg()[0]
    if not args.quick and load > args.max_load:
        sys.exit(f"bench_mpi: 1-minute load average {load:.2f} > {args.max_load}; wait for "
                 "a quiet machine (or raise --max-load, and say so with the figures)")
    configs = {"1 process x 2 threads": (1, 2), "1 process x 1 thread": (1, 1),
               "2 ranks x 1 thread": (2, 1)}
    results = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, (ranks, threads) in configs.items():
            results[name].append(run_config(ranks, threads, args))
    base = statistics.median(r["images_per_s"] for r in results["1 process x 1 thread"])
    print(f"VGG-{args.model} width {args.width}, global batch {args.batch}, {args.steps} "
          f"steps, backend {args.backend}, load before {load:.2f}")
    table = {}
    for name, runs in results.items():
        rates = [r["images_per_s"] for r in runs]
        med = statistics.median(rates)
        table[name] = {"images_per_s_median": med, "images_per_s_range": [min(rates),
                       max(rates)], "speedup_vs_1x1": med / base,
                       "allreduce_ms_median": statistics.median(r["allreduce_ms"]
                                                                for r in runs),
                       "step_ms_median": statistics.median(r["step_ms"] for r in runs)}
        print(f"  {name:24s} {med:8.1f} images/s ({min(rates):.1f}-{max(rates):.1f}), "
              f"x{med / base:.2f} of 1x1, Allreduce {table[name]['allreduce_ms_median']:.1f} "
              f"ms of a {table[name]['step_ms_median']:.0f} ms step")
    if args.quick:
        return
    out = ROOT / "benchmarks" / "results" / (
        f"mpi-{machine()['cpu'].lower().replace(' ', '-')[:40]}-{date.today()}.json")
    out.write_text(json.dumps({"machine": machine(), "versions": versions(),
                               "date": str(date.today()), "load_before": load,
                               "settings": vars(args), "results": table, "runs": results},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
