"""How fast is the RGB first layer: im2col written as rows or as planes, or Winograd?

The first convolution of a CIFAR network (3 -> 16 channels, 3x3, padding 1, batch 128 of
32x32 images, float32) on the Numba kernels, timed two ways in the same process, taking
turns in each round: its columns written as im2col's rows (N*OH*OW, 27), and as
``im2col_planes`` (27, N*OH*OW), the transposed matrix that Conv2D builds for inputs of at
most ``dispatch.PLANES_MAX_CHANNELS`` (7) channels. Timed: the column writer alone, the layer's
forward, and forward + backward (weight and bias gradients; no input gradient, as in a
first layer); the layer is also timed with ``algorithm="winograd"`` (F(4x4, 3x3)), which
``"auto"`` does not pick below ``dispatch.WINOGRAD_MIN_CHANNELS`` input channels.

    python benchmarks/bench_first_layer.py [--rounds 5] [--batch 128] [--out-channels 16]

Prints the median and the range over rounds, in milliseconds (each round's figure is
itself the median of 30 calls). Compare numbers of the same run only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minivgg as mv  # noqa: E402
from minivgg import kernels  # noqa: E402
from minivgg.kernels import dispatch  # noqa: E402
from minivgg.layers import Conv2D  # noqa: E402


def median_ms(fn, calls=30):
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out-channels", type=int, default=16, help="16: the default "
                        "network's first layer; 64: VGG-11's")
    args = parser.parse_args()
    mv.set_cpu_kernels("numba")
    rng = np.random.default_rng(0)
    n = args.batch
    x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
    f = args.out_channels
    dy = rng.standard_normal((n, f, 32, 32)).astype(np.float32)
    conv = Conv2D(3, f, rng=rng)
    conv.input_grad = False
    rows_out = np.empty((n * 32 * 32, 27), np.float32)
    planes_out = np.empty((27, n * 32 * 32), np.float32)
    by_planes = kernels.im2col_by_planes
    results = {}

    def record(name, fn):
        results.setdefault(name, []).append(median_ms(fn))

    for _ in range(args.rounds):
        record("im2col, rows", lambda: kernels.im2col(x, 3, 3, 1, 1, out=rows_out))
        record("im2col, planes", lambda: kernels.im2col_planes(x, 3, 3, 1, 1, out=planes_out))
        for layout, planes in (("rows", False), ("planes", True)):
            kernels.im2col_by_planes = (lambda t, p=planes: p and by_planes(t))
            record(f"forward, {layout}", lambda: conv.forward(x))
            record(f"forward + backward, {layout}", lambda: (conv.forward(x), conv.backward(dy)))
        kernels.im2col_by_planes = by_planes
        conv.algorithm = "winograd"
        record("forward, winograd", lambda: conv.forward(x))
        record("forward + backward, winograd", lambda: (conv.forward(x), conv.backward(dy)))
        conv.algorithm = "auto"
    print(f"first layer 3->{f}, batch {n}, 32x32, numba; load {os.getloadavg()[0]:.2f}; "
          f"planes for <= {dispatch.PLANES_MAX_CHANNELS} channels")
    print("| what | median ms | range |\n|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {np.median(values):.2f} | {min(values):.2f}-{max(values):.2f} |")


if __name__ == "__main__":
    main()
