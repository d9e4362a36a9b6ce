"""Time every lesson as a learner runs it: in order, each in a fresh process.

    python benchmarks/time_lessons.py                 # normal, then fast mode
    python benchmarks/time_lessons.py --modes normal  # only the normal path
    python benchmarks/time_lessons.py --only 12 13    # some lessons
    python benchmarks/time_lessons.py --data shapes   # the offline fallback (no CIFAR-10)

The Numba cache is warmed first (one fast pass, not timed), so the times are those of a
learner's second run onwards. Before each lesson the 1-minute load average is recorded;
the run refuses to start above --max-load (a busy machine makes every number slower).
Once lessons run back to back the 1-minute average includes the previous lesson (about 1
on two cores): what matters is that nothing else runs, which the start-up check shows.
Writes results/lessons[-shapes]-<date>.json with machine, versions, date, loads and times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))


def load1() -> float:
    return os.getloadavg()[0]


def run_lesson(path: Path, fast: bool, data: str = "auto") -> float:
    env = dict(os.environ, MPLBACKEND="Agg", MINIVGG_LESSON_FAST="1" if fast else "0")
    if data == "shapes":     # what a learner offline and without a copy of CIFAR-10 gets
        env.update(MINIVGG_LESSON_DATA="shapes", MINIVGG_LESSON_DOWNLOAD="0")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(path)], cwd=ROOT / "lessons", env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{path.name} failed:\n{done.stderr[-2000:]}")
    return seconds


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["normal", "fast"],
                        choices=["normal", "fast"])
    parser.add_argument("--only", nargs="+", default=None, help="lesson numbers")
    parser.add_argument("--max-load", type=float, default=0.3)
    parser.add_argument("--no-warm", action="store_true", help="skip the untimed fast pass")
    parser.add_argument("--data", choices=["auto", "shapes"], default="auto",
                        help="auto: what the lessons find (CIFAR-10 when present); "
                             "shapes: the synthetic fallback")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()

    lessons = [p for p in LESSONS if args.only is None or p.name[:2] in args.only]
    start_load = load1()
    if start_load > args.max_load:
        raise SystemExit(f"1-minute load average {start_load:.2f} > {args.max_load}: "
                         "the machine is busy, times would be too slow; try again later")
    if not args.no_warm:
        print("warming the Numba cache (one fast pass, not timed) ...", flush=True)
        for path in lessons:
            run_lesson(path, fast=True, data=args.data)

    import numba
    import numpy
    result = {"date": date.today().isoformat(), "machine": cpu_name(),
              "cores": os.cpu_count(), "python": platform.python_version(),
              "numpy": numpy.__version__, "numba": numba.__version__,
              "data": args.data, "load_at_start": round(start_load, 2), "modes": {}}
    for mode in args.modes:
        rows = []
        for path in lessons:
            before = load1()
            seconds = run_lesson(path, fast=(mode == "fast"), data=args.data)
            rows.append({"lesson": path.name, "seconds": round(seconds, 2),
                         "load_before": round(before, 2)})
            print(f"{mode:6s} {path.name:34s} {seconds:6.1f} s   (load before {before:.2f})",
                  flush=True)
        total = sum(r["seconds"] for r in rows)
        print(f"{mode:6s} total {total:.0f} s", flush=True)
        result["modes"][mode] = {"total_seconds": round(total, 1), "lessons": rows}

    if not args.no_save:
        name = "lessons-shapes" if args.data == "shapes" else "lessons"
        out = ROOT / "benchmarks" / "results" / f"{name}-{result['date']}.json"
        partial = out.with_suffix(".json.partial")
        partial.write_text(json.dumps(result, indent=2) + "\n")
        partial.replace(out)                      # atomic: never a half-written file
        print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
