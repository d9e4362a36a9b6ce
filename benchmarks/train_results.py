"""Turn finished run folders into a committed result: benchmarks/results/train-<name>-<date>.json

    python benchmarks/train_results.py fashion-mnist /tmp/runs/fmnist
    python benchmarks/train_results.py --table        # the README table from every result

A result records what was trained (the run's config.json and model spec), the final and
best test accuracy, the epochs, the wall time the run measured itself (training and
evaluation, without start-up and figures), the machine and the date. The wall time comes
from a 2-core VM shared with other work, so it is an upper bound on what the same code
does on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def summarise_run(run: Path) -> dict:
    from minivgg.checkpoint import read_checkpoint
    from minivgg.files import read_csv, read_json
    rows = read_csv(run / "metrics.csv")
    config = read_json(run / "config.json")
    last_ckpt = read_checkpoint(run / "last.npz", arrays=False)
    last = rows[-1]
    summary = {"run": str(run), "epochs": last["epoch"],
               "test_top1": round(last["test_top1"], 2), "test_top5": round(last["test_top5"], 2),
               "best_test_top1": round(max(r["test_top1"] for r in rows), 2),
               "train_top1": round(last["train_top1"], 2), "wall_s": round(last["elapsed_s"], 1),
               "curve": [round(r["test_top1"], 2) for r in rows], "config": config,
               "spec": last_ckpt.facts.settings}
    if "val_top1" in last:          # the checkpoint selected on validation: its test figure
        chosen = rows[last_ckpt.progress.best_epoch - 1]
        summary.update(selected_epoch=chosen["epoch"], selected_val_top1=chosen["val_top1"],
                       selected_test_top1=round(chosen["test_top1"], 2))
    return summary


def write_result(name: str, runs: list[Path], note: str) -> Path:
    import numpy as np
    summaries = [summarise_run(r) for r in runs]
    report = {"name": name, "note": note, "runs": summaries,
              "mean_test_top1": round(statistics.mean(s["test_top1"] for s in summaries), 2),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, shared with other work",
              "cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"),
              "versions": {"python": platform.python_version(), "numpy": np.__version__}}
    path = RESULTS / f"train-{name}-{report['date']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def table() -> str:
    """Markdown rows for the README from every train-*.json result."""
    lines = ["| data | network | epochs | test top-1 | wall time | machine, date |",
             "|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("train-*.json")):
        report = json.loads(path.read_text())
        if "runs" in report:
            for run in report["runs"]:
                c = run["config"]
                lines.append(f"| {c['dataset']}, augment {c['augment']} | {c['model']} width "
                             f"{c['width']}{' BN' if c['batch_norm'] else ''} | {run['epochs']} | "
                             f"{run['test_top1']:.2f} % | {run['wall_s'] / 60:.1f} min | "
                             f"2-core {report['cpu'].split()[0]} (shared), {report['date']} |")
        elif "results" in report:
            for side, res in report["results"].items():
                accs = [r["test_top1"] for r in res.values()]
                walls = [r["wall_s"] for r in res.values()]
                if accs:
                    lines.append(f"| cifar10 subset, {side} | A width 0.25 BN | "
                                 f"{report['config']['epochs']} | {statistics.mean(accs):.2f} % "
                                 f"(mean of {len(accs)} seeds) | "
                                 f"{statistics.mean(walls) / 60:.1f} min per run | 2-core "
                                 f"(shared), {report['date']} |")
    return "\n".join(lines)


def parity_table() -> str:
    """Per-seed test top-1 of the newest parity result, minivgg beside PyTorch."""
    paths = sorted(RESULTS.glob("train-parity-*.json"))
    if not paths:
        return ""
    report = json.loads(paths[-1].read_text())
    res = report["results"]
    seeds = sorted(set(res["minivgg"]) | set(res["torch"]), key=int)
    nan = float("nan")
    lines = ["| seed | minivgg (numba) | PyTorch, independent | PyTorch on minivgg's batches "
             "and initial weights | minivgg wall | PyTorch wall |", "|---|---|---|---|---|---|"]
    for seed in seeds:
        m, t = res["minivgg"].get(seed, {}), res["torch"].get(seed, {})
        tm = res.get("torch-matched", {}).get(seed, {})
        lines.append(f"| {seed} | {m.get('test_top1', nan):.2f} % | {t.get('test_top1', nan):.2f} %"
                     f" | {tm.get('test_top1', nan):.2f} % | {m.get('wall_s', 0):.0f} s | "
                     f"{t.get('wall_s', 0):.0f} s |")
    mean = report["mean_test_top1"]
    lines.append(f"| mean | {mean.get('minivgg', nan):.2f} % | {mean.get('torch', nan):.2f} % | "
                 f"{mean.get('torch-matched', nan):.2f} % | | |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", nargs="?", help="result name, e.g. fashion-mnist")
    ap.add_argument("runs", nargs="*", type=Path, help="run folders")
    ap.add_argument("--note", default="", help="what to remember about these runs")
    ap.add_argument("--table", action="store_true", help="print the README table")
    ap.add_argument("--md", type=Path, help="also write the tables to this Markdown file")
    args = ap.parse_args()
    if args.name and args.runs:
        print(f"wrote {write_result(args.name, args.runs, args.note)}")
    if args.table or args.md or not args.runs:
        text = f"{table()}\n\nParity on the CIFAR-10 subset, per seed:\n\n{parity_table()}\n"
        print(text)
        if args.md:
            args.md.write_text(f"# Training results\n\n{__doc__.split(chr(10) * 2)[2]}\n\n"
                               + text)


if __name__ == "__main__":
    main()
