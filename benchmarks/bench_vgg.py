"""Throughput and memory of VGG-11-CIFAR: minivgg on every backend against PyTorch.

    .venv/bin/python benchmarks/bench_vgg.py              # batch 64 and 128, 5 rounds
    .venv/bin/python benchmarks/bench_vgg.py --quick      # batch 64, 2 rounds
    .venv/bin/python benchmarks/bench_vgg.py --batch 64 --profile
    .venv/bin/python benchmarks/bench_vgg.py --quick --loss-steps 5   # + im2col/Winograd losses

Network: VGG configuration A at 32x32 (3x3 convs with padding 1 + ReLU, 2x2 max-pool),
Flatten(512), Dense 512 -> 10; 9,225,610 parameters; float32; softmax cross-entropy;
SGD with momentum 0.9 (minivgg.optim.SGD and torch.optim.SGD: the same update rule).
Variants: "minivgg:BACKEND" (Conv2D's default algorithm, "auto"),
"minivgg:numba-im2col" and "minivgg:numba-winograd" (every convolution forced to one
algorithm), "torch:nchw" and "torch:channels_last". Built here from minivgg.layers so the
benchmark does not depend on models/vgg.py. The first convolution computes no input
gradient (neither does PyTorch's, whose input does not require a gradient).

Timing: the variants are timed in interleaved rounds (a shared VM drifts by 15-25 %, so a
variant timed alone in a quiet minute would look better than it is), minivgg's in one
worker process and PyTorch's in another, taking turns (each library with its own OpenMP
runtime and settings); we quote the median images/second over rounds, with min and max.
Peak memory: each variant runs again in its own subprocess, whose peak resident set
(VmHWM, the whole process: interpreter, libraries, model, activations) is reported.
Numba start-up: a subprocess with NUMBA_CACHE_DIR set to an empty directory (cold:
compiles every kernel), then a second one with the same directory (warm: loads them from
the cache), three times, each followed by Numba's own floor (import NumPy and Numba, call
one trivial cached function).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from hoststate import cpu_times, numba_threading_layer, steal_percent  # noqa: E402

CONFIG_A = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
LR, MOMENTUM = 0.01, 0.9


# -- the network, both ways ----------------------------------------------------------------------

def minivgg_model(seed=0, algorithm="auto"):
    from minivgg.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
    from minivgg.models.sequential import Sequential
    rng, layers, c = np.random.default_rng(seed), [], 3
    for v in CONFIG_A:
        if v == "M":
            layers.append(MaxPool2D(2, 2))
        else:
            layers += [Conv2D(c, v, 3, 1, 1, rng=rng, algorithm=algorithm),
                       ReLU(inplace=True)]                  # as models/vgg.py and torch
            c = v
    model = Sequential(*layers, Flatten(), Dense(512, 10, rng=rng))
    model[0].input_grad = False            # the data needs no gradient
    return model


def torch_model(channels_last):
    import torch
    from torch import nn
    layers, c = [], 3
    for v in CONFIG_A:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def split_precision(name):
    """"cupy+tf32" -> ("cupy", True): a variant allowed TF32 for its float32 GEMMs (and
    PyTorch's convolutions); without the suffix both run exact float32."""
    base, plus, precision = name.partition("+")
    if plus and precision != "tf32":
        raise ValueError(f"unknown precision {precision!r} in variant {name!r}; expected +tf32")
    return base, bool(plus)


class MinivggRunner:
    """One training step = minivgg.train.train_step: forward, loss, backward, SGD update.

    Variants share the process, so each one's settings (backend, TF32) are made current by
    ``activate()``, which the timing loop calls *before* starting its clock: no probe, no
    backend switch and no device-to-host copy inside a timed step.
    """

    def __init__(self, name, batch):
        import minivgg as mv
        from minivgg.optim import SGD
        from minivgg.train import train_step
        name, self.tf32 = split_precision(name)
        backend, _, algorithm = name.partition("-")        # "numba-winograd" -> numba, winograd
        self.backend, self.mv, self.step = backend, mv, train_step
        self.activate()
        self.device = mv.resolve_device("gpu" if backend == "cupy" else "cpu")
        self.model = minivgg_model(algorithm=algorithm or "auto")
        self.optimizer = SGD(self.model, LR, MOMENTUM, weight_decay=0.0)
        mv.place(self.model, self.optimizer, self.device)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        self.x = mv.to_device(x, self.device)
        self.y = mv.to_device(rng.integers(0, 10, batch), self.device)

    def activate(self):
        """Make this variant's backend and TF32 setting current (outside any timing)."""
        if self.backend == "cupy":
            self.mv.set_backend("cupy", tf32=self.tf32)
        else:
            self.mv.set_backend(self.backend)

    def train_step(self):
        """One step; returns the loss as train_step gives it (not copied to the host)."""
        out = self.step(self.model, self.optimizer, self.x, self.y)
        self.sync()
        return out[0] if isinstance(out, tuple) else out

    def infer(self):
        self.model.eval()
        with self.mv.no_grad():
            self.model.forward(self.x)
        self.sync()

    def sync(self):
        if self.backend == "cupy":
            import cupy
            cupy.cuda.get_current_stream().synchronize()

    def gpu_bytes(self):
        if self.backend != "cupy":
            return None
        import cupy
        return cupy.get_default_memory_pool().total_bytes()


class TorchRunner:
    def __init__(self, name, batch):
        import torch
        layout, self.tf32 = split_precision(name)
        self.torch, self.device = torch, "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(0)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        self.model = torch_model(layout == "channels_last").to(self.device)
        self.x = torch.randn(batch, 3, 32, 32, device=self.device).to(memory_format=fmt)
        self.y = torch.randint(0, 10, (batch,), device=self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def activate(self):
        """TF32 as the variant says, for cuBLAS and cuDNN alike (PyTorch's defaults differ:
        convolutions allow TF32, matmuls do not), so the comparison is like for like."""
        if self.device == "cuda":
            self.torch.backends.cuda.matmul.allow_tf32 = self.tf32
            self.torch.backends.cudnn.allow_tf32 = self.tf32

    def train_step(self):
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.sync()

    def infer(self):
        self.model.eval()
        with self.torch.inference_mode():
            self.model(self.x)
        self.sync()

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def gpu_bytes(self):
        return self.torch.cuda.max_memory_allocated() if self.device == "cuda" else None


def make_runner(variant, batch):
    kind, name = variant.split(":")
    return MinivggRunner(name, batch) if kind == "minivgg" else TorchRunner(name, batch)


def available_variants():
    import minivgg.backend as b
    variants = ["minivgg:numpy"]
    try:
        import numba  # noqa: F401
        has_numba = True
    except ImportError:
        has_numba = False
    if has_numba:
        # "numba" is what users get (Conv2D's algorithm="auto"); the others force one algorithm
        variants += ["minivgg:numba", "minivgg:numba-im2col", "minivgg:numba-winograd"]
    gpu = b.cupy_problem() is None
    if gpu:                          # exact float32, and TF32 allowed: compared like for like
        variants += ["minivgg:cupy", "minivgg:cupy+tf32"]
    try:
        import torch
        variants += ["torch:nchw", "torch:channels_last"]
        if gpu and torch.cuda.is_available():
            variants += ["torch:nchw+tf32", "torch:channels_last+tf32"]
    except ImportError:
        pass
    return variants


# -- measurements --------------------------------------------------------------------------------

def time_interleaved(variants, batch, rounds, steps):
    """{(variant, mode): [img/s per round]}; variants alternate inside every round.

    minivgg's variants run in one worker process and PyTorch's in another, taking turns
    round by round (the idle one waits on its stdin): each library loads its own OpenMP
    runtime with its own settings. In one process they would share the first one loaded
    (the same libgomp.so.1), and minivgg's short spin count (backend.py) would become
    PyTorch's, or PyTorch's long one minivgg's. The NumPy reference gets a third process:
    timed just before minivgg:numba in one process, its large temporaries slowed that
    variant's training at batch 64 by up to 20 % (316 against 394 img/s for
    numba-winograd, whose kernels differ only in the first layer; 329 and 320 without it).
    """
    groups = {}
    for v in variants:
        group = "reference" if v == "minivgg:numpy" else v.split(":")[0]
        groups.setdefault(group, []).append(v)
    workers = [subprocess.Popen([sys.executable, __file__, "--worker-timing", str(batch),
                                 str(steps), *group], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
               for group in groups.values()]
    try:
        for w in workers:                               # built and warmed up
            _reply(w)
        speeds, gpu = {}, {}
        for _ in range(rounds):
            for w in workers:
                w.stdin.write("round\n")
                w.stdin.flush()
                for key, value in _reply(w)["speeds"]:
                    speeds.setdefault(tuple(key), []).append(value)
        for w in workers:
            w.stdin.write("done\n")
            w.stdin.flush()
            gpu.update(_reply(w)["gpu"])
    finally:
        for w in workers:
            w.stdin.close()
            w.wait()
    return speeds, gpu


def _reply(worker):
    line = worker.stdout.readline()
    if not line:
        raise SystemExit(f"timing worker exited with {worker.wait()}")
    return json.loads(line)


def worker_timing(batch, steps, variants):
    """Run in a fresh process: build and warm up the variants, then time one round of each
    for every "round" read from stdin, answering one JSON line per request."""
    runners = {v: make_runner(v, batch) for v in variants}
    for r in runners.values():                      # warm-up: JIT, allocator, caches
        r.activate()
        r.train_step()
        r.infer()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        speeds = []
        for v, r in runners.items():
            r.activate()                            # settings switched before the clock
            for mode, fn, k in (("train", r.train_step, steps), ("infer", r.infer, 2 * steps)):
                t = time.perf_counter()
                for _ in range(k):
                    fn()
                speeds.append(((v, mode), batch * k / (time.perf_counter() - t)))
        print(json.dumps({"speeds": speeds}), flush=True)
    print(json.dumps({"gpu": {v: r.gpu_bytes() for v, r in runners.items()}}), flush=True)


def worker_memory(variant, batch):
    """Run in a fresh process: a few steps, then report the peak resident set."""
    def status_mb(field):      # VmHWM: this process's peak RSS (ru_maxrss can carry the
        text = Path("/proc/self/status").read_text()       # parent's peak across fork+exec)
        return int(re.search(field + r":\s+(\d+)", text).group(1)) / 1024
    runner = make_runner(variant, batch)
    runner.activate()
    after_setup = status_mb("VmRSS")
    for _ in range(2):
        runner.train_step()
        runner.infer()
    peak = status_mb("VmHWM")
    print(json.dumps({"peak_rss_mb": peak, "rss_after_setup_mb": after_setup,
                      "gpu_bytes": runner.gpu_bytes()}))


def measure_memory(variant, batch):
    out = subprocess.run([sys.executable, __file__, "--worker-memory", variant, str(batch)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


JIT_PROBE = """
import time; t0 = time.perf_counter()
import numpy as np, minivgg as mv
from minivgg.layers import Conv2D, ReLU, MaxPool2D, Flatten, Dense
from minivgg.models.sequential import Sequential
from minivgg.optim import SGD
from minivgg.train import train_step
mv.set_backend("numba"); t1 = time.perf_counter()
m = Sequential(Conv2D(3, 4), ReLU(), MaxPool2D(), Conv2D(4, 4), ReLU(), MaxPool2D(),
               Flatten(), Dense(16, 2))
x = np.ones((2, 3, 8, 8), np.float32)
train_step(m, SGD(m, 0.01), x, np.array([0, 1]))
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


FLOOR_PROBE = """
import time; t0 = time.perf_counter()
import numpy as np, numba

@numba.njit(cache=True)
def add_one(x):
    return x + 1

add_one(np.ones(4))
print(time.perf_counter() - t0)
"""


def measure_jit(repeats=3):
    """Cold and warm Numba start-up: import time and the first float32 training step.

    Warm start is measured ``repeats`` times (the median run is reported), alternated with
    Numba's own floor on this machine: a script that imports NumPy and Numba and calls one
    trivial cached function, so the report shows what minivgg adds to what Numba costs.
    """
    def run(script, env):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             check=True, env=env, cwd=ROOT)
        return out.stdout.split(), time.perf_counter() - t

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        probe, floor = Path(cache) / "jit_probe.py", Path(cache) / "numba_floor.py"
        probe.write_text(JIT_PROBE)
        floor.write_text(FLOOR_PROBE)
        def start_up():
            (imp, first), wall = run(probe, env)
            return {"import_s": float(imp), "first_step_s": float(first), "process_s": wall}

        run(floor, env)                                  # compile the floor's function once
        cold = start_up()                                # compiles every kernel
        warm = []
        for _ in range(repeats):
            warm.append(start_up())
            (floor_s,), _ = run(floor, env)
            warm[-1]["numba_floor_s"] = float(floor_s)
        warm.sort(key=lambda r: r["import_s"] + r["first_step_s"])
        return {"cold": cold, "warm": warm[len(warm) // 2], "warm_runs": warm}


# -- context and report --------------------------------------------------------------------------

def machine_info():
    model = platform.processor() or "unknown"
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
    except (OSError, AttributeError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform()}


def versions():
    found = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("numba", "torch", "cupy"):
        try:
            found[name] = __import__(name).__version__
        except Exception:
            found[name] = None
    return found


def profile_numba_step(batch, name="numba", steps=3):
    """Time each layer's forward and backward inside a Numba training step."""
    runner, totals = MinivggRunner(name, batch), {}
    for i, layer in enumerate(runner.model.layers):
        for phase in ("forward", "backward"):
            fn = getattr(layer, phase)

            def timed(*a, _fn=fn, _key=f"{i:2d} {layer!r} {phase}", **k):
                t = time.perf_counter()
                r = _fn(*a, **k)
                totals[_key] = totals.get(_key, 0.0) + time.perf_counter() - t
                return r
            setattr(layer, phase, timed)
    runner.train_step()
    totals.clear()
    t = time.perf_counter()
    for _ in range(steps):
        runner.train_step()
    step = (time.perf_counter() - t) / steps
    print(f"\nProfile, {name}, batch {batch}: {step * 1000:.0f} ms per training step")
    for key, v in sorted(totals.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {v / steps * 1000:7.1f} ms  {v / steps / step:5.1%}  {key}")
    rest = step - sum(totals.values()) / steps
    print(f"  {rest * 1000:7.1f} ms  {rest / step:5.1%}  loss + SGD update + Python")


def compare_losses(batch, steps):
    """float32 training losses of im2col and Winograd from the same weights and batch."""
    curves = {}
    for name in ("numba-im2col", "numba-winograd"):
        runner = MinivggRunner(name, batch)
        curves[name] = [float(runner.train_step()) for _ in range(steps)]
    print(f"\nfloat32 losses over {steps} SGD steps (batch {batch}, same start):")
    for i, (a, b) in enumerate(zip(*curves.values())):
        print(f"  step {i}: im2col {a:.7f}  winograd {b:.7f}  relative diff {abs(a - b) / a:.1e}")
    return curves


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="default: 64 128")
    ap.add_argument("--quick", action="store_true", help="batch 64, 2 rounds, no numpy backend")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per round")
    ap.add_argument("--variants", nargs="+", default=None, help="e.g. minivgg:numba torch:nchw")
    ap.add_argument("--profile", action="store_true", help="print a per-layer Numba profile")
    ap.add_argument("--loss-steps", type=int, default=0,
                    help="train im2col and Winograd from the same start; print both losses")
    ap.add_argument("--tag", default="", help="suffix for the results file name")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--max-load", type=float, default=0.3,
                    help="refuse to start above this 1-minute load average")
    ap.add_argument("--worker-memory", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--worker-timing", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_memory:
        return worker_memory(args.worker_memory[0], int(args.worker_memory[1]))
    if args.worker_timing:
        batch, steps, *variants = args.worker_timing
        return worker_timing(int(batch), int(steps), variants)
    load_at_start = os.getloadavg()        # before anything here adds to it (torch's import)
    if load_at_start[0] > args.max_load:
        raise SystemExit(f"1-minute load average {load_at_start[0]:.2f} > {args.max_load}: "
                         "the machine is busy; a busy host slows PyTorch's threads more than "
                         "minivgg's and flatters the ratio. Wait, or pass --max-load.")

    batches = args.batch or ([64] if args.quick else [64, 128])
    rounds = args.rounds or (2 if args.quick else 5)
    variants = args.variants or available_variants()
    if args.quick and not args.variants:
        variants = [v for v in variants if v != "minivgg:numpy"]
    if args.profile:
        for b in batches:
            for name in [v.split(":")[1] for v in variants if v.startswith("minivgg:numba")]:
                profile_numba_step(b, name)
    losses = compare_losses(batches[0], args.loss_steps) if args.loss_steps else None

    rows, load, steal = [], {"before": load_at_start}, {}
    for batch in batches:
        start = cpu_times()
        speeds, gpu = time_interleaved(variants, batch, rounds, args.steps)
        load[f"after batch {batch}"] = os.getloadavg()
        steal[f"batch {batch}"] = steal_percent(start)
        for v in variants:
            memory = measure_memory(v, batch)
            for mode in ("train", "infer"):
                s = speeds[(v, mode)]
                rows.append({"variant": v, "batch": batch, "mode": mode,
                             "tf32": split_precision(v.split(":")[1])[1],
                             "img_s": statistics.median(s), "img_s_min": min(s),
                             "img_s_max": max(s), "rounds": len(s),
                             "peak_rss_mb": memory["peak_rss_mb"],
                             "rss_after_setup_mb": memory["rss_after_setup_mb"],
                             "gpu_bytes": memory["gpu_bytes"] or gpu[v]})
    for row in rows:                     # ratio to PyTorch's best layout, same precision
        torch_rows = [r for r in rows if r["variant"].startswith("torch:")
                      and r["batch"] == row["batch"] and r["mode"] == row["mode"]
                      and r["tf32"] == row["tf32"]]
        if torch_rows:
            best = max(torch_rows, key=lambda r: r["img_s"])
            row["vs_torch_best"] = row["img_s"] / best["img_s"]
            row["memory_vs_torch_best"] = row["peak_rss_mb"] / best["peak_rss_mb"]
    jit = measure_jit() if any(v.startswith("minivgg:numba") for v in variants) else None

    print(f"\nVGG-11-CIFAR (config A, 32x32, 9,225,610 parameters), float32, "
          f"{machine_info()['cpu']}, {os.cpu_count()} cores; median of {rounds} rounds; "
          f"load average (1 min) " + ", ".join(f"{k} {v[0]:.1f}" for k, v in load.items())
          + "; CPU time stolen by the host while timing "
          + ", ".join(f"{k} {v}%" for k, v in steal.items()) + "\n")
    print("| variant | batch | mode | img/s (min-max) | vs PyTorch best | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['vs_torch_best']:.2f}x" if "vs_torch_best" in r else "-"
        mem = f"{r['peak_rss_mb']:.0f}"
        if "memory_vs_torch_best" in r:
            mem += f" ({r['memory_vs_torch_best']:.2f}x)"
        print(f"| {r['variant']} | {r['batch']} | {r['mode']} | {r['img_s']:.1f} "
              f"({r['img_s_min']:.0f}-{r['img_s_max']:.0f}) | {ratio} | {mem} |")
    if jit:
        print(f"\nNumba start-up (import + first training step of a tiny net): cold "
              f"{jit['cold']['import_s'] + jit['cold']['first_step_s']:.2f} s, warm "
              f"{jit['warm']['import_s'] + jit['warm']['first_step_s']:.2f} s "
              f"(first step alone: {jit['cold']['first_step_s']:.2f} s / "
              f"{jit['warm']['first_step_s']:.2f} s)")
        warm = sorted(r["import_s"] + r["first_step_s"] for r in jit["warm_runs"])
        floor = sorted(r["numba_floor_s"] for r in jit["warm_runs"])
        print(f"warm over {len(warm)} runs: {warm[0]:.2f}-{warm[-1]:.2f} s; Numba's own floor "
              f"(import NumPy + Numba, one trivial cached function), alternated with them: "
              f"{floor[len(floor) // 2]:.2f} s ({floor[0]:.2f}-{floor[-1]:.2f})")

    if not args.no_save:
        now = dt.datetime.now()
        tag = f"-{args.tag}" if args.tag else ""
        slug = re.sub(r"[^a-z0-9]+", "-", machine_info()["cpu"].lower()).strip("-")
        name = f"{slug}-{os.cpu_count()}core-{now:%Y-%m-%d}{tag}.json"
        path = ROOT / "benchmarks" / "results" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"date": now.isoformat(timespec="seconds"), "machine": machine_info(),
                  "versions": versions(), "network": "VGG-11-CIFAR (config A, 32x32)",
                  "settings": {"rounds": rounds, "steps": args.steps, "lr": LR,
                               "momentum": MOMENTUM, "dtype": "float32",
                               "numba_threading_layer": numba_threading_layer()},
                  "load_average": load, "cpu_steal_percent": steal, "results": rows,
                  "numba_startup": jit,
                  "losses_im2col_vs_winograd": losses}
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
