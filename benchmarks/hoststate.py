"""How much of the CPU the host took from this machine while a benchmark ran, and which
threads minivgg's Numba kernels run on (both recorded beside every benchmark result).

On a virtual machine the hypervisor may run another guest on our cores; the time it takes
shows up as *steal* in /proc/stat (Linux). The load average does not see it, yet it slows
PyTorch's synchronised worker threads more than minivgg's, so a benchmark records it next
to the load:

    start = cpu_times()
    ...                                  # the benchmark
    steal = steal_percent(start)         # % of CPU time stolen since start; None off Linux
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies summed over all CPUs since boot, or None without /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]     # user nice system idle iowait irq softirq steal
    steal = values[7] if len(values) > 7 else 0
    return steal, sum(values[:8])


def steal_percent(start: tuple[int, int] | None) -> float | None:
    """Percent of all CPU time stolen by the host since ``start`` (from cpu_times())."""
    end = cpu_times()
    if start is None or end is None or end[1] <= start[1]:
        return None
    return round(100.0 * (end[0] - start[0]) / (end[1] - start[1]), 2)


def numba_threading_layer() -> str:
    """The threading layer a fresh minivgg process runs its Numba kernels on, in this
    environment (minivgg's choice, backend.configure_numba_threads, unless
    NUMBA_THREADING_LAYER says otherwise), with GOMP_SPINCOUNT where it is OpenMP."""
    probe = ("import numpy as np; from minivgg.kernels import cpu; from minivgg import backend; "
             "cpu.relu_forward_flat(np.ones(4, np.float32), np.empty(4, np.float32), "
             "np.empty(4, np.bool_)); import numba, os; layer = numba.threading_layer(); "
             "spin = os.environ.get('GOMP_SPINCOUNT', backend.GOMP_SPINCOUNT); "
             "print(layer + (f' (GOMP_SPINCOUNT={spin})' if layer == 'omp' else ''))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else f"unknown ({done.stderr[-200:]})"
