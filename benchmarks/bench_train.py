"""What users run first: the default `minivgg train`, end to end, against the same recipe in
plain PyTorch.

    python benchmarks/bench_train.py --data-dir ../shared/data/cifar10-subset
    python benchmarks/bench_train.py --data-dir DIR --epochs 3 --rounds 3

Each side runs as a fresh process, timed from its start to its exit (start-up, reading
the data, training, evaluation, checkpoints):

- **minivgg**: ``minivgg train --data-dir DIR --epochs E --out TMP`` -- every other setting
  is the default (VGG-A at width 0.25 with batch norm, batch 128, SGD momentum 0.9, weight
  decay 5e-4, cosine schedule, crop+flip augmentation, a 10 % validation split scored
  every epoch with the test set, last.npz / best.npz written every epoch, the figures at
  the end).
- **PyTorch**: this file run with ``--side torch``: the same network, initialisation,
  recipe, validation split and per-epoch scoring of validation and test, written with
  torch's layers, optimizer and scheduler (torch.save of the model every epoch). It reads
  the CIFAR pickles itself; it draws its own random numbers.

The sides alternate for ``--rounds`` rounds; the table quotes the median and range of each
side's wall time and of the ratio (PyTorch's time / minivgg's: above 1 means minivgg is
faster), and "train+eval", the time inside the epochs only (without start-up and figures).
A run refuses to start above --max-load (1-minute load average): on a busy host PyTorch's
threads slow down far more than minivgg's, which flatters the ratio. The CPU time the
host stole meanwhile (another guest on our cores, invisible to the load average) is
recorded beside it (hoststate.py). An untimed one-epoch minivgg run goes first, so that
the rounds load the compiled kernels from Numba's cache (the first run after an install
compiles them, about 25 s; ``--no-warmup`` skips it).
Writes results/train-<cpu>-<date>.json with the machine, versions, date, load and steal.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from hoststate import cpu_times, numba_threading_layer, steal_percent

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-subset"
RECIPE = {"width": 0.25, "batch": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
          "padding": 4, "val_split": 0.1, "eval_batch": 500}


# -- the PyTorch side (runs in its own process) ------------------------------------------
def torch_side(data_dir: Path, epochs: int, seed: int, out: Path) -> None:
    import numpy as np
    import torch
    from torch import nn
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from torch_parity import read_cifar, torch_vgg

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr, xte, yte = read_cifar(data_dir)
    held = np.random.default_rng(seed).permutation(len(xtr))
    n_val = int(round(RECIPE["val_split"] * len(xtr)))
    xva, yva = xtr[held[:n_val]], ytr[held[:n_val]]
    xtr, ytr = xtr[held[n_val:]], ytr[held[n_val:]]
    mean = torch.tensor([xtr[:, c].mean(dtype=np.float64) for c in range(3)]).float()
    std = torch.tensor([xtr[:, c].std(dtype=np.float64) for c in range(3)]).float()
    norm = lambda x: (x.float() - mean[:, None, None]) / std[:, None, None]
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    splits = {"val": (norm(torch.from_numpy(xva)), torch.from_numpy(yva)),
              "test": (norm(torch.from_numpy(xte)), torch.from_numpy(yte))}
    model = torch_vgg(torch, nn, RECIPE["width"])
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": RECIPE["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=RECIPE["lr"], momentum=RECIPE["momentum"])
    b, p = RECIPE["batch"], RECIPE["padding"]
    steps = len(xtr) // b
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / (steps * epochs), 1.0))))
    loss_fn = nn.CrossEntropyLoss()
    t_epochs = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(steps):
            idx = order[i * b:(i + 1) * b]
            x = nn.functional.pad(xtr_t[idx], (p, p, p, p))
            top = torch.randint(0, 2 * p + 1, (len(idx),), generator=gen)
            left = torch.randint(0, 2 * p + 1, (len(idx),), generator=gen)
            rows = (top[:, None] + torch.arange(32))[:, None, :, None]
            cols = (left[:, None] + torch.arange(32))[:, None, None, :]
            x = x[torch.arange(len(idx))[:, None, None, None],
                  torch.arange(3)[None, :, None, None], rows, cols]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x[flip] = x[flip].flip(3)
            loss = loss_fn(model(norm(x)), ytr_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            for xs, ys in splits.values():
                e = RECIPE["eval_batch"]
                sum(int((model(xs[j:j + e]).argmax(1) == ys[j:j + e]).sum())
                    for j in range(0, len(xs), e))
        torch.save(model.state_dict(), out / "last.pt")
    t_end = time.perf_counter()
    (out / "times.json").write_text(json.dumps({"train_eval_s": t_end - t_epochs,
                                                "inside_s": t_end - t_start}))


# -- the two sides, timed from outside ---------------------------------------------------
def run_side(side: str, data_dir: Path, epochs: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-train-{side}-") as tmp:
        out = Path(tmp) / "run"
        if side == "minivgg":
            script = Path(sys.executable).with_name("minivgg")   # the command users type
            cmd = [str(script), "train", "--data-dir", str(data_dir),
                   "--epochs", str(epochs), "--seed", str(seed), "--out", str(out),
                   "--no-progress"]
        else:
            out.mkdir()
            cmd = [sys.executable, __file__, "--side", "torch", "--data-dir", str(data_dir),
                   "--epochs", str(epochs), "--seed", str(seed), "--out", str(out)]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{side} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
        if side == "minivgg":
            with open(out / "metrics.csv") as f:
                inside = float(list(csv.DictReader(f))[-1]["elapsed_s"])
        else:
            inside = json.loads((out / "times.json").read_text())["train_eval_s"]
    return {"wall_s": round(wall, 2), "train_eval_s": round(inside, 2)}


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-load", type=float, default=0.3)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the untimed one-epoch minivgg run that fills the Numba cache")
    ap.add_argument("--side", choices=["torch"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side == "torch":
        return torch_side(args.data_dir, args.epochs, args.seed, args.out)

    load = os.getloadavg()[0]
    if load > args.max_load:
        raise SystemExit(f"1-minute load average {load:.2f} > {args.max_load}: the machine is "
                         "busy and the ratio would be wrong; try again when it is quiet")
    if not args.no_warmup:              # untimed: loads (or, after an install, compiles)
        run_side("minivgg", args.data_dir, 1, args.seed)      # the Numba kernels' cache
    start = cpu_times()
    runs = {"minivgg": [], "torch": []}
    for r in range(args.rounds):
        for side in ("minivgg", "torch"):
            before = cpu_times()
            result = run_side(side, args.data_dir, args.epochs, args.seed)
            result["load_before"] = round(os.getloadavg()[0], 2)
            result["cpu_steal_percent"] = steal_percent(before)
            runs[side].append(result)
            print(f"round {r + 1}: {side:8s} {result['wall_s']:6.1f} s end to end, "
                  f"{result['train_eval_s']:6.1f} s in the epochs", flush=True)
    ratio = [t["wall_s"] / m["wall_s"] for m, t in zip(runs["minivgg"], runs["torch"])]
    inside = [t["train_eval_s"] / m["train_eval_s"]
              for m, t in zip(runs["minivgg"], runs["torch"])]
    import numba
    import numpy
    import torch
    result = {
        "what": f"default `minivgg train` for {args.epochs} epochs vs the same recipe in "
                "PyTorch, each a fresh process, wall time",
        "date": date.today().isoformat(), "machine": cpu_name(), "cores": os.cpu_count(),
        "load_at_start": round(load, 2), "cpu_steal_percent": steal_percent(start),
        "data_dir": str(args.data_dir),
        "epochs": args.epochs, "rounds": args.rounds,
        "versions": {"python": platform.python_version(), "numpy": numpy.__version__,
                     "numba": numba.__version__, "torch": torch.__version__},
        "numba_threading_layer": numba_threading_layer(),
        "runs": runs,
        "wall_s": {side: summary([r["wall_s"] for r in rs]) for side, rs in runs.items()},
        "ratio_end_to_end": summary(ratio), "ratio_train_eval": summary(inside),
    }
    print("\n| side | end to end, s (median, range) | in the epochs, s |\n|---|---|---|")
    for side, rs in runs.items():
        w, i = summary([r["wall_s"] for r in rs]), summary([r["train_eval_s"] for r in rs])
        print(f"| {side} | {w['median']:.1f} ({w['min']:.1f}-{w['max']:.1f}) | "
              f"{i['median']:.1f} ({i['min']:.1f}-{i['max']:.1f}) |")
    e, t = result["ratio_end_to_end"], result["ratio_train_eval"]
    print(f"ratio (PyTorch time / minivgg time): end to end {e['median']:.2f}x "
          f"({e['min']:.2f}-{e['max']:.2f}), in the epochs {t['median']:.2f}x "
          f"({t['min']:.2f}-{t['max']:.2f}); load at start {load:.2f}, CPU time stolen by the "
          f"host {result['cpu_steal_percent']}%")
    if not args.no_save:
        name = cpu_name().lower().replace("(r)", "").replace(" ", "-")
        path = ROOT / "benchmarks" / "results" / f"train-{name}-{result['date']}.json"
        k = 1
        while path.exists():                       # one file per run of the benchmark
            k += 1
            path = path.with_name(f"train-{name}-{result['date']}-run{k}.json")
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(result, indent=2) + "\n")
        partial.replace(path)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
