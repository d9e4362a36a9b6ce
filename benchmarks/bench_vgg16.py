"""VGG-16 (configuration D) at 224x224, inference: minivgg against PyTorch, speed and memory.

    python benchmarks/bench_vgg16.py                # batch 8, 3 interleaved rounds
    python benchmarks/bench_vgg16.py --batch 4 --rounds 2 --no-save

The paper's network with its ImageNet head (138,357,544 parameters, float32, random
weights: speed does not depend on their values), a forward pass in evaluation mode without
caches (``minivgg.no_grad()``; ``torch.inference_mode()``). minivgg on its Numba kernels
(Conv2D "auto": im2col for the 3-channel first layer, Winograd for the rest); PyTorch as
NCHW and channels_last. The variants alternate inside every round; the table quotes the
median img/s and its range, and the ratio to PyTorch's faster layout. Peak memory: each
variant again in a fresh process, two passes, its VmHWM (the whole process: interpreter,
libraries, the 553 MB of weights, activations and scratch buffers).
Refuses to start above --max-load (1-minute load average). Writes
results/vgg16-<cpu>-<date>.json with machine, versions, date and load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_vgg import machine_info, versions  # noqa: E402
from hoststate import cpu_times, numba_threading_layer, steal_percent  # noqa: E402

CONFIG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
            512, 512, 512, "M"]
VARIANTS = ["minivgg:numba", "torch:nchw", "torch:channels_last"]


class Minivgg:
    def __init__(self, batch):
        import minivgg as mv
        from minivgg.models import vgg
        mv.set_backend("numba")
        self.mv = mv
        self.model = vgg("D", num_classes=1000, input_size=224, rng=np.random.default_rng(0))
        self.model.eval()
        self.x = np.random.default_rng(1).standard_normal((batch, 3, 224, 224)) \
            .astype(np.float32)

    def infer(self):
        with self.mv.no_grad():
            self.model.forward(self.x)


class Torch:
    def __init__(self, batch, channels_last):
        import torch
        from torch import nn
        torch.manual_seed(0)
        layers, c = [], 3
        for v in CONFIG_D:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.model = nn.Sequential(
            *layers, nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, 1000)).eval()
        self.torch, self.x = torch, torch.randn(batch, 3, 224, 224)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.to(memory_format=torch.channels_last)

    def infer(self):
        with self.torch.inference_mode():
            self.model(self.x)


def make(variant, batch):
    return Minivgg(batch) if variant.startswith("minivgg") else \
        Torch(batch, variant.endswith("channels_last"))


def peak_memory_worker(variant, batch):
    runner = make(variant, batch)
    for _ in range(2):
        runner.infer()
    text = Path("/proc/self/status").read_text()
    print(json.dumps({"peak_rss_mb": int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024}))


def peak_memory(variant, batch):
    out = subprocess.run([sys.executable, __file__, "--worker", variant, "--batch", str(batch)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-load", type=float, default=0.3)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return peak_memory_worker(args.worker, args.batch)
    load = os.getloadavg()[0]
    if load > args.max_load:
        raise SystemExit(f"1-minute load average {load:.2f} > {args.max_load}: the machine is "
                         "busy and the ratios would be wrong; try again when it is quiet")
    start = cpu_times()
    runners = {v: make(v, args.batch) for v in VARIANTS}
    for r in runners.values():
        r.infer()                                         # warm-up: JIT, allocator, caches
    speeds = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for v, r in runners.items():
            t = time.perf_counter()
            r.infer()
            speeds[v].append(args.batch / (time.perf_counter() - t))
    del runners
    steal = steal_percent(start)
    memory = {v: peak_memory(v, args.batch) for v in VARIANTS}
    best_torch = max(("torch:nchw", "torch:channels_last"),
                     key=lambda v: statistics.median(speeds[v]))
    rows = {}
    print(f"\nVGG-16 at 224x224, inference, batch {args.batch}, {args.rounds} rounds, "
          f"load at start {load:.2f}, CPU time stolen by the host {steal}%\n")
    print("| variant | img/s (median, range) | vs PyTorch best | peak RSS MB (vs best) |")
    print("|---|---|---|---|")
    for v in VARIANTS:
        med = statistics.median(speeds[v])
        ratio = med / statistics.median(speeds[best_torch])
        mem_ratio = memory[v] / memory[best_torch]
        rows[v] = {"img_s": speeds[v], "median": med, "vs_torch_best": ratio,
                   "peak_rss_mb": memory[v], "rss_vs_torch_best": mem_ratio}
        print(f"| {v} | {med:.2f} ({min(speeds[v]):.2f}-{max(speeds[v]):.2f}) | "
              f"{ratio:.2f}x | {memory[v]:.0f} ({mem_ratio:.2f}x) |")
    if not args.no_save:
        cpu = re.sub(r"[^a-z0-9]+", "-", machine_info()["cpu"].lower()).strip("-")
        path = ROOT / "benchmarks" / "results" / f"vgg16-{cpu}-{date.today()}.json"
        k = 1
        while path.exists():
            k += 1
            path = path.with_name(f"vgg16-{cpu}-{date.today()}-run{k}.json")
        record = {"date": date.today().isoformat(), "machine": machine_info(),
                  "versions": versions(), "numba_threading_layer": numba_threading_layer(),
                  "load_at_start": load, "cpu_steal_percent": steal,
                  "batch": args.batch,
                  "rounds": args.rounds, "torch_best": best_torch, "results": rows}
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(record, indent=2) + "\n")
        partial.replace(path)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
