"""Train the same small VGG with minivgg and with PyTorch; compare test accuracy.

Same network (VGG-A at width 0.25 with batch norm, one Dense layer to the classes), same
initialisation scheme (He-normal fan-out convolutions, N(0, 0.01) Dense, zero biases,
batch norm 1 / 0), same data (the real CIFAR-10 subset), same augmentation (4-pixel zero
padding + random 32x32 crop + horizontal flip, then per-channel standardisation with the
training set's statistics), same optimizer (SGD, momentum 0.9, weight decay 5e-4 on
weights only, batch 128, last partial batch dropped) and the same schedule (cosine from
lr 0.05 to 0, updated every step). The PyTorch side shares no code with minivgg: it reads
the CIFAR pickles itself and uses torch's layers, optimizer and scheduler. The random
draws differ (different generators), so the comparison is of means over seeds.

    python benchmarks/torch_parity.py --data-dir ../shared/data/cifar10-subset \
        --epochs 15 --seeds 0 1 2

Writes benchmarks/results/train-parity-<machine>-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CFG = {"model": "A", "width": 0.25, "batch_norm": True, "batch_size": 128, "lr": 0.05,
       "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine", "augment": "crop+flip",
       "crop_padding": 4, "eval_batch_size": 500,
       "val_split": 0.0}          # both sides train on every training image


# -- minivgg ----------------------------------------------------------------------------
def run_minivgg(data_dir: str, epochs: int, seed: int, out: Path) -> dict:
    from minivgg.files import write_json
    from minivgg.run import DEFAULTS, build_run
    from minivgg.train import Trainer
    config = {**DEFAULTS, **CFG, "dataset": "cifar10", "data_dir": data_dir, "epochs": epochs,
              "seed": seed, "backend": "numba"}
    run = build_run(config)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)        # the run folder `minivgg eval` can read
    trainer = Trainer.for_run(run, out, progress=False, log=lambda *a: None)
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    last = trainer.history[-1]
    return {"test_top1": last["test_top1"], "test_loss": last["test_loss"],
            "train_top1": last["train_top1"], "wall_s": round(wall, 1),
            "curve": [round(r["test_top1"], 2) for r in trainer.history]}


# -- PyTorch, independently --------------------------------------------------------------
def read_cifar(folder: Path):
    folder = folder / "cifar-10-batches-py" if (folder / "cifar-10-batches-py").is_dir() else folder

    def batch(name):
        with open(folder / name, "rb") as f:      # the official files, trusted here
            d = pickle.load(f, encoding="bytes")
        return (np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32),
                np.asarray(d[b"labels"], np.int64))
    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = batch("test_batch")
    return xtr, ytr, xte, yte


def torch_vgg(torch, nn, width: float, num_classes: int = 10):
    layers, c = [], 3
    for item in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        out = max(1, int(round(item * width)))
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        c = out
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c, num_classes))
    for m in model.modules():                     # torchvision's VGG initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


def run_torch(data_dir: str, epochs: int, seed: int, threads: int) -> dict:
    import torch
    from torch import nn
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr, xte, yte = read_cifar(Path(data_dir))
    mean = torch.tensor([xtr[:, c].mean(dtype=np.float64) for c in range(3)]).float()
    std = torch.tensor([xtr[:, c].std(dtype=np.float64) for c in range(3)]).float()
    norm = lambda x: (x.float() - mean[:, None, None]) / std[:, None, None]
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    xte_t, yte_t = norm(torch.from_numpy(xte)), torch.from_numpy(yte)
    model = torch_vgg(torch, nn, CFG["width"])
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": CFG["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=CFG["lr"], momentum=CFG["momentum"])
    b, p = CFG["batch_size"], CFG["crop_padding"]
    steps = len(xtr) // b
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / (steps * epochs), 1.0))))
    loss_fn, curve = nn.CrossEntropyLoss(), []
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        correct = seen = 0
        for i in range(steps):
            idx = order[i * b:(i + 1) * b]
            x = nn.functional.pad(xtr_t[idx], (p, p, p, p))          # zeros, as uint8
            top = torch.randint(0, 2 * p + 1, (len(idx),), generator=gen)
            left = torch.randint(0, 2 * p + 1, (len(idx),), generator=gen)
            rows = (top[:, None] + torch.arange(32))[:, None, :, None]
            cols = (left[:, None] + torch.arange(32))[:, None, None, :]
            x = x[torch.arange(len(idx))[:, None, None, None], torch.arange(3)[None, :, None,
                  None], rows, cols]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x[flip] = x[flip].flip(3)
            x, y = norm(x), ytr_t[idx]
            out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
        model.eval()
        with torch.no_grad():
            hits = sum(int((model(xte_t[j:j + 500]).argmax(1) == yte_t[j:j + 500]).sum())
                       for j in range(0, len(xte_t), 500))
        curve.append(round(100.0 * hits / len(xte_t), 2))
    wall = time.perf_counter() - t0
    return {"test_top1": curve[-1], "train_top1": 100.0 * correct / seen,
            "wall_s": round(wall, 1), "curve": curve}


def run_torch_matched(data_dir: str, epochs: int, seed: int, threads: int) -> dict:
    """PyTorch trained on minivgg's own batches from minivgg's initial weights (same seed).

    Shuffling, augmentation and initial weights are then shared with the minivgg run of the
    same seed; only the arithmetic (layers, loss, optimizer, rounding) is PyTorch's.
    """
    import torch
    from torch import nn

    from minivgg.run import DEFAULTS, build_run
    torch.set_num_threads(threads)
    config = {**DEFAULTS, **CFG, "dataset": "cifar10", "data_dir": data_dir, "epochs": epochs,
              "seed": seed, "backend": "numpy"}
    run = build_run(config)       # minivgg's batches and initial weights, on the CPU
    train, test, ours = run.train_loader, run.test_loader, run.model
    model = torch_vgg(torch, nn, CFG["width"])
    with torch.no_grad():
        for a, b in zip(ours.parameters(), model.parameters()):
            b.copy_(torch.from_numpy(np.ascontiguousarray(a.data.T if a.data.ndim == 2
                                                          else a.data)))
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": CFG["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=CFG["lr"], momentum=CFG["momentum"])
    steps = len(train)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / (steps * epochs), 1.0))))
    curve, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        train.set_epoch(epoch)
        for x, y in train:
            loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            hits = sum(int((model(torch.from_numpy(x)).argmax(1) == torch.from_numpy(y)).sum())
                       for x, y in test)
        curve.append(round(100.0 * hits / len(test.labels), 2))
    return {"test_top1": curve[-1], "wall_s": round(time.perf_counter() - t0, 1),
            "curve": curve}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/cifar10-subset"))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="/tmp/runs/parity", help="run folders and per-run JSON")
    ap.add_argument("--only", choices=("minivgg", "torch", "torch-matched"),
                    help="run one side only; 'torch-matched' (never run by default): PyTorch "
                    "on minivgg's batches from minivgg's initial weights")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="PyTorch's threads (1 is faster on a busy machine)")
    ap.add_argument("--report", action="store_true",
                    help="train nothing; collect the per-run JSON files of --out into the result")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in [] if args.report else args.seeds:
        sides = [args.only] if args.only else ["minivgg", "torch"]
        for side in sides:
            if side == "minivgg":
                r = run_minivgg(args.data_dir, args.epochs, seed, out / f"seed{seed}")
            elif side == "torch":
                r = run_torch(args.data_dir, args.epochs, seed, args.threads)
            else:
                r = run_torch_matched(args.data_dir, args.epochs, seed, args.threads)
            r.update(side=side, seed=seed, epochs=args.epochs)
            (out / f"{side}-seed{seed}.json").write_text(json.dumps(r, indent=2) + "\n")
            print(f"{side:8s} seed {seed}: test top-1 {r['test_top1']:.2f}%  "
                  f"({r['wall_s']:.0f} s)  curve {r['curve']}", flush=True)
    write_report(out, args)


def write_report(out: Path, args) -> None:
    import torch
    results = {"minivgg": {}, "torch": {}, "torch-matched": {}}
    for path in sorted(out.glob("*-seed*.json")):
        r = json.loads(path.read_text())
        if r["epochs"] == args.epochs:
            results[r["side"]][r["seed"]] = r
    mean = {side: round(statistics.mean(r["test_top1"] for r in res.values()), 2)
            for side, res in results.items() if res}
    chosen = {side: [res[s]["test_top1"] for s in args.seeds if s in res]
              for side, res in results.items()}
    mean_chosen = {side: round(statistics.mean(v), 2) for side, v in chosen.items() if v}
    report = {
        "what": "test top-1 after training the same VGG-A-BN (width 0.25) with minivgg "
                "(numba backend) and PyTorch on the real CIFAR-10 subset",
        "config": {**CFG, "epochs": args.epochs, "data": args.data_dir},
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs (shared with other work)",
        "cpu": _cpu_name(), "date": time.strftime("%Y-%m-%d"),
        "versions": {"numpy": np.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "results": results, "mean_test_top1": mean,
        "seeds_for_mean": args.seeds, "mean_test_top1_of_those_seeds": mean_chosen,
    }
    if "minivgg" in mean and "torch" in mean:
        report["difference_points"] = round(mean["minivgg"] - mean["torch"], 2)
        print(f"mean test top-1 over all seeds: minivgg {mean['minivgg']:.2f}%, torch "
              f"{mean['torch']:.2f}% (difference {report['difference_points']:+.2f} points)")
    for other in ("torch", "torch-matched"):
        if "minivgg" not in mean_chosen or other not in mean_chosen:
            continue
        d = round(mean_chosen["minivgg"] - mean_chosen[other], 2)
        report[f"difference_points_of_those_seeds_vs_{other}"] = d
        print(f"seeds {args.seeds}: minivgg {mean_chosen['minivgg']:.2f}%, {other} "
              f"{mean_chosen[other]:.2f}% (difference {d:+.2f} points)")
    path = ROOT / "benchmarks" / "results" / f"train-parity-{time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
