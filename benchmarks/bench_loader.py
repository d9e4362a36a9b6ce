"""How fast does the DataLoader deliver augmented batches?

Measures images per second for batches of 128 with random crop (padding 4), horizontal
flip and normalisation (and, second, with the VGG paper's scale jittering and AlexNet's
PCA colour shift), on the shared CIFAR-10 subset (or the synthetic shapes where it is
absent), with and without background prefetching. Training runs at roughly 100-200
images/s on a 2-core CPU, so the loader should be at least ten times faster than that.

    python benchmarks/bench_loader.py [--epochs 5] [--batch-size 128]

Prints the numbers and writes benchmarks/results/loader-<machine>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minivgg.data import (  # noqa: E402
    Compose,
    DataLoader,
    HorizontalFlip,
    Normalize,
    PCALighting,
    RandomCrop,
    ScaleJitter,
    load_cifar10,
    make_shapes,
)

SUBSET = ROOT.parent / "shared/data/cifar10-subset"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_slug() -> str:
    """A file-name-safe machine label: CPU model and core count, e.g. 'xeon-8375c-2cpu'."""
    name = re.sub(r"\(r\)|\(tm\)|cpu|@.*|processor|\d+-core", "", cpu_name().lower())
    name = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return f"{name or platform.machine()}-{os.cpu_count()}cpu"


def pipelines(images) -> dict:
    """The augmentations measured: the usual CIFAR recipe, and the VGG paper's."""
    norm = Normalize.from_data(images)
    return {
        "crop+flip+normalize": Compose([RandomCrop(32, 4), HorizontalFlip(), norm]),
        "scalejitter+flip+pca+normalize": Compose([
            ScaleJitter(32, (32, 40)), HorizontalFlip(), PCALighting.from_data(images), norm]),
    }


def measure(images, labels, transform, batch_size, epochs, prefetch) -> float:
    """Images per second over ``epochs`` full passes (after one warm-up pass)."""
    loader = DataLoader(images, labels, batch_size=batch_size, transform=transform, seed=0,
                        prefetch=prefetch)
    for _ in loader:  # warm-up: page in the arrays, start the allocator
        pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _y in loader:
            count += len(x)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    if (SUBSET / "cifar-10-batches-py").is_dir():
        ds = load_cifar10(SUBSET, download=False)
        source = "cifar10-subset"
    else:
        ds = make_shapes(5000, 0, seed=0)
        source = "shapes"
    images, labels = ds.train_images, ds.train_labels

    results = {}
    for name, transform in pipelines(images).items():
        for prefetch in (0, 2):
            rate = measure(images, labels, transform, args.batch_size, args.epochs, prefetch)
            results[f"{name}, prefetch={prefetch}"] = round(rate, 1)
            print(f"loader, {source}, batch {args.batch_size}, {name}, "
                  f"prefetch={prefetch}: {rate:,.0f} images/s")

    now = datetime.datetime.now(datetime.timezone.utc)
    record = {
        "benchmark": "loader", "dataset": source, "images": len(images),
        "batch_size": args.batch_size, "epochs": args.epochs,
        "images_per_second": results,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                    "platform": platform.platform(), "label": machine_slug()},
        "versions": {"python": platform.python_version(), "numpy": np.__version__},
        "date": now.isoformat(timespec="seconds"),
    }
    out = ROOT / "benchmarks" / "results" / f"loader-{machine_slug()}-{now:%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
