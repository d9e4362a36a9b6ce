"""Lesson 11 -- backends: the same layers on NumPy, Numba (and CuPy where there is a GPU).

    python lessons/11_backends.py
"""

# %%
import os
import subprocess
import sys
import textwrap
import time

from _common import FAST, done, np, out_dir, plt, save, say, section, timed, title
from numba import njit

import minivgg as mv
from minivgg import kernels
from minivgg.backend import cupy_problem
from minivgg.gradcheck import relative_error
from minivgg.kernels import cpu
from minivgg.layers import Conv2D
from minivgg.models import vgg
from minivgg.optim import SGD
from minivgg.train import train_step

FIGURES = ["timings.png", "blas_threads.png"]
OUT = out_dir("11_backends")

title("Lesson 11: one set of layers, three sets of kernels")
say("""
    A layer never asks which backend is active. It calls minivgg.kernels (im2col, col2im,
    max-pool, ReLU), and the dispatcher picks an implementation per call, from the array
    it is given and the backend setting:

        CuPy array                 -> kernels/gpu.py (CUDA)
        NumPy array, "numba"       -> kernels/cpu.py (Numba, compiled, parallel)
        NumPy array, "numpy"       -> kernels/reference.py (the readable specification)

    The matrix products stay in the array library (OpenBLAS here, cuBLAS on a GPU).
""")
x = np.zeros((1, 1, 4, 4), np.float32)
for name in ("numpy", "numba"):
    mv.set_backend(name)
    print(f"   set_backend({name!r}): kernels.implementation(numpy array) -> "
          f"{kernels.implementation(x).__name__}")
problem = cupy_problem()
has_gpu = problem is None
print(textwrap.fill("CuPy: " + ("usable, a GPU is present" if has_gpu else
                                f"not usable here ({problem[0]}): {problem[1]}"),
                    width=92, initial_indent="   ", subsequent_indent="     "))
print(f"   set_backend('auto') chooses {mv.set_backend('auto')!r} on this machine "
      "(CuPy if it works, else Numba, else NumPy)")
backends = ["numpy", "numba"] + (["cupy"] if has_gpu else [])

# %% The one-time JIT compile
section("The one-time JIT compile")
say("""
    Numba compiles a function the first time it is called with new argument types. The
    package's kernels use cache=True: the machine code is stored beside the source and a
    later process only loads it. A fresh function with no cache shows the real compile:
""")


@njit(cache=False)
def count_positive(a):
    total = 0
    for v in a.ravel():
        if v > 0:
            total += 1
    return total


data = np.random.default_rng(0).standard_normal(10**6)
t0 = time.perf_counter()
count_positive(data)
t_compile = time.perf_counter() - t0
t_run = timed(lambda: count_positive(data), repeat=5)
print(f"   a fresh @njit function: first call {t_compile * 1e3:.0f} ms (compile + run), "
      f"later calls {t_run * 1e3:.2f} ms")
mv.set_backend("numba")
xb = np.random.default_rng(1).standard_normal((8, 16, 32, 32)).astype(np.float32)
t0 = time.perf_counter()
kernels.im2col(xb, 3, 3, 1, 1)
t_first = time.perf_counter() - t0
t_later = timed(lambda: kernels.im2col(xb, 3, 3, 1, 1), repeat=5)
compiled = [f for f in vars(cpu).values() if hasattr(f, "stats")]   # Numba dispatchers
hits = sum(sum(f.stats.cache_hits.values()) for f in compiled)
misses = sum(sum(f.stats.cache_misses.values()) for f in compiled)
print(f"   the package's Numba im2col: first call in this process {t_first * 1e3:.0f} ms, "
      f"later calls {t_later * 1e3:.1f} ms")
print(f"   Numba's own count for kernels/cpu.py so far: {hits} loaded from the on-disk cache, "
      f"{misses} compiled now (a compile happens on the first run, or after the source changed)")

# %% The same convolution on every backend
section("The same convolution on every backend")
rng = np.random.default_rng(2)
n, c, s, f = (8, 32, 16, 32) if FAST else (16, 64, 32, 64)
x = rng.standard_normal((n, c, s, s)).astype(np.float32)
dout = rng.standard_normal((n, f, s, s)).astype(np.float32)
repeat = 3 if FAST else 7


def synchronize(name):
    """Wait for the GPU to finish (its calls return before the work is done)."""
    if name == "cupy":
        import cupy
        cupy.cuda.Device().synchronize()


def conv_closures(name, algorithm):
    """Outputs and gradients of the conv on one backend, and closures that time it."""
    mv.set_backend(name)
    layer = Conv2D(c, f, rng=np.random.default_rng(3), algorithm=algorithm)  # same weights
    device = "gpu" if name == "cupy" else "cpu"
    mv.place(layer, None, device)
    xd, dd = mv.to_device(x, device), mv.to_device(dout, device)
    chosen = "winograd" if layer.uses_winograd(xd) else "im2col"

    def forward():
        y = layer.forward(xd, training=True)
        synchronize(name)
        return y

    def forward_backward():
        layer.forward(xd, training=True)
        dx = layer.backward(dd)
        synchronize(name)
        return dx

    y, dx = forward(), forward_backward()
    outputs = (mv.asnumpy(y), mv.asnumpy(dx), mv.asnumpy(layer.weight.grad).copy())
    return chosen, outputs, {"forward": forward, "forward+backward": forward_backward}


def interleaved(closures, repeat):
    """Median time of each closure, the variants taking turns (a busy machine's noise then
    hits all of them alike). ``closures``: {key: (backend, fn)}."""
    samples = {key: [] for key in closures}
    for _ in range(repeat):
        for key, (name, fn) in closures.items():
            mv.set_backend(name)
            t0 = time.perf_counter()
            fn()
            samples[key].append(time.perf_counter() - t0)
    return {key: float(np.median(v)) for key, v in samples.items()}


variants = [(name, "auto") for name in backends] + [("numba", "im2col")]
results, closures, labels = {}, {}, []
for name, algorithm in variants:
    chosen, outputs, fns = conv_closures(name, algorithm)
    label = f"{name}, {chosen}" + (" (auto)" if algorithm == "auto" else "")
    if label in labels:          # "auto" already chose im2col on this backend
        continue
    labels.append(label)
    results[label] = outputs
    closures.update({(label, what): (name, fn) for what, fn in fns.items()})
medians = interleaved(closures, repeat)
conv_times = {label: {what: medians[label, what] for what in ("forward", "forward+backward")}
              for label in labels}
print(f"   x {x.shape}, {f} filters 3x3; medians of {repeat}, the variants taking turns:")
for label in labels:
    t = conv_times[label]
    print(f"   {label:24s}: forward {t['forward'] * 1e3:7.1f} ms, forward + backward "
          f"{t['forward+backward'] * 1e3:7.1f} ms")
ref = results[labels[0]]
for label in labels[1:]:
    errs = [relative_error(a, b) for a, b in zip(results[label], ref)]
    print(f"   {label} vs {labels[0]}: relative error y {errs[0]:.1e}, dx {errs[1]:.1e}, "
          f"dW {errs[2]:.1e}" + ("  (identical)" if max(errs) == 0 else "  (rounding)"))
say("""
    Conv2D(algorithm="auto") lets the dispatcher choose: the im2col + GEMM of lessons 02-04
    everywhere, or Winograd where the package measured it faster
    (kernels.winograd_preferred): F(4x4, 3x3) on maps of 3x3 and larger (36
    multiplications per 4 x 4 output tile instead of 144), F(2x2, 3x3) on 2x2 maps (16
    per 2 x 2 tile instead of 36). An RGB first layer stays on im2col, but on Numba its
    matrix is written transposed, one shifted input plane per row
    (kernels.im2col_by_planes): 27-value rows are slow to gather, whole image rows fast.
    The results agree: im2col bit for bit across backends, Winograd to float32 rounding.
""")

# %% A whole training step
section("A whole training step")
batch, width = (16, 0.25) if FAST else (32, 0.5)
xs = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
ys = rng.integers(0, 10, batch)


def step_closure(name):
    """A fresh VGG-A (same seed on every backend) and a closure doing one SGD step."""
    mv.set_backend(name)
    device = "gpu" if name == "cupy" else "cpu"
    model = vgg("A", num_classes=10, input_size=32, head="cifar", width=width, seed=0)
    opt = SGD(model, lr=0.01, momentum=0.9, weight_decay=5e-4)
    mv.place(model, opt, device)                 # parameters and optimizer state
    xd, yd = mv.to_device(xs, device), mv.to_device(ys, device)

    def step():
        loss, _ = train_step(model, opt, xd, yd)   # minivgg.train's one training step
        synchronize(name)
        return loss

    first_loss = step()
    return first_loss, mv.asnumpy(model["features"][0].weight.data).copy(), step


after, steps, first, step_times = {}, {}, {}, {}
for name in backends:
    first[name], after[name], step = step_closure(name)
    steps[name] = (name, step)
medians = interleaved(steps, repeat)
for name in backends:
    t = step_times[name] = medians[name]
    print(f"   {name:6s}: VGG-A width {width}, batch {batch}: {t * 1e3:7.1f} ms per step = "
          f"{batch / t:6.0f} images/s (first loss {first[name]:.4f})")
for name in backends[1:]:
    print(f"   after one step, first-layer weights {name} vs numpy: max |difference| "
          f"{np.abs(after[name] - after['numpy']).max():.1e}")
fastest = min(backends, key=lambda b: step_times[b])
print("   speed-up of the training step over the NumPy reference: " + ", ".join(
    f"{b} {step_times['numpy'] / step_times[b]:.2f} x" for b in backends[1:])
      + f"; fastest here: {fastest}")
say("""
    The matrix products are OpenBLAS calls on both CPU backends; what Numba wins is the
    rest (im2col, col2im, pooling, ReLU, Winograd's transforms) in parallel compiled
    loops over NHWC memory, where the reference makes k*k strided copies and transposes.
    On a busy shared machine timings swing by tens of per cent: rerun, and compare only
    numbers measured side by side, as here.
""")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
xs_bar = np.arange(2)
for i, label in enumerate(labels):
    axes[0].bar(xs_bar + (i - (len(labels) - 1) / 2) * 0.8 / len(labels),
                [conv_times[label][k] * 1e3 for k in ("forward", "forward+backward")],
                0.8 / len(labels), label=label)
axes[0].set_xticks(xs_bar, ["conv forward", "conv forward + backward"])
axes[0].set_ylabel("milliseconds (median)")
axes[0].legend(fontsize=7)
axes[0].set_title(f"one Conv2D, x {x.shape}", fontsize=9)
axes[1].bar(backends, [step_times[b] * 1e3 for b in backends], color="tab:purple")
axes[1].set_title(f"training step, VGG-A width {width}, batch {batch}", fontsize=9)
fig.suptitle(f"backends on this machine (JIT compile of a fresh function: "
             f"{t_compile * 1e3:.0f} ms)", fontsize=9)
save(fig, OUT, FIGURES[0])

# %% Threads: more is not always faster
section("Threads: more is not always faster")
say("""
    OpenBLAS splits each matrix product over the cores, and its threads spin while they
    wait for work. When other programs also want the cores, a spinning thread can hold a
    core its partner needs. (So minivgg's Numba backend shares its GEMMs out among its own
    worker threads, one BLAS thread each, and OpenBLAS's pool never spins: kernels/blas.py.
    It uses as many workers as OpenBLAS has threads.) The thread count is fixed when NumPy
    loads, so each setting runs in a fresh process: training steps of the VGG-A above, and
    one large matrix product for comparison.
""")
child_batch, child_steps, rounds = batch, (3 if FAST else 6), (1 if FAST else 2)
gemm = 512 if FAST else 1024                       # a gemm x gemm float32 matrix product
CHILD = f"""
import time, numpy as np, minivgg as mv
from minivgg.models import vgg
from minivgg.optim import SGD
from minivgg.train import train_step
mv.set_backend("numba")
model = vgg("A", 10, 32, head="cifar", width={width}, seed=0)
opt = SGD(model, lr=0.01)
x = np.random.default_rng(0).standard_normal(({child_batch}, 3, 32, 32)).astype(np.float32)
y = np.arange({child_batch}) % 10
times = []
for _ in range({child_steps}):
    t = time.perf_counter()
    train_step(model, opt, x, y)
    times.append(time.perf_counter() - t)
a = np.random.default_rng(1).standard_normal(({gemm}, {gemm})).astype(np.float32)
a @ a
gemm_times = []
for _ in range(3):
    t = time.perf_counter()
    a @ a
    gemm_times.append(time.perf_counter() - t)
print(np.median(times[1:]), 2 * {gemm} ** 3 / min(gemm_times) / 1e9)
"""
per_threads = {"1": [], "2": []}
gflops = {"1": [], "2": []}
for _ in range(rounds):                               # the settings take turns
    for threads in per_threads:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                             text=True, check=True).stdout
        step_s, rate = out.split()[-2:]
        per_threads[threads].append(float(step_s))
        gflops[threads].append(float(rate))
load = os.getloadavg()[0]
for threads, values in per_threads.items():
    print(f"   OPENBLAS_NUM_THREADS={threads}: {1e3 * min(values):7.1f} ms per training step "
          f"(batch {child_batch}; median of {child_steps - 1} steps, best of {rounds} "
          f"process(es)); a {gemm} x {gemm} product at {max(gflops[threads]):.0f} GFLOP/s")
ratio = min(per_threads["2"]) / min(per_threads["1"])
print(f"   two BLAS threads take {ratio:.2f} x the time of one, with the machine's load "
      f"average at {load:.1f} on {os.cpu_count()} cores")
gemm_ratio = max(gflops["2"]) / max(gflops["1"])
say(f"""
    On the large product two threads ran at {gemm_ratio:.2f} x the rate of one here; on an
    idle machine they approach 2 x, on a busy one, or for the small products of a small
    network, one thread can be as fast or faster. The lessons default to one BLAS thread
    (MINIVGG_LESSON_THREADS in lessons/_common.py); measure before you choose.
""")
fig, ax = plt.subplots(figsize=(5, 3))
ax.bar([f"{t} BLAS thread{'s' if t != '1' else ''}" for t in per_threads],
       [1e3 * min(v) for v in per_threads.values()], color=["tab:green", "tab:orange"])
ax.set_ylabel("ms per training step")
ax.set_title(f"VGG-A width {width}, batch {child_batch} (load average {load:.1f})", fontsize=9)
save(fig, OUT, FIGURES[1])

# %% Waking threads: what starting a parallel kernel costs
section("Waking threads: what starting a parallel kernel costs")
say("""
    Each parallel Numba kernel hands its loop to worker threads and waits for them; a
    training step of the default network starts about a hundred such kernels, so the
    hand-over itself counts. Numba's "workqueue" threads sleep between kernels and are
    woken for each; OpenMP's threads spin a moment before they sleep, and start at once
    when the next kernel follows soon. minivgg picks OpenMP where Numba has GNU's (Linux),
    its spin cut short so that idle threads do not take the cores from the matrix products
    between kernels (configure_numba_threads in minivgg/backend.py). Each threading layer
    runs in a fresh process (Numba fixes it at the first parallel kernel):
""")
LAUNCH = """
import time, numpy as np, numba
from numba import njit, prange
from minivgg.backend import configure_numba_threads
configure_numba_threads()

@njit(parallel=True)
def add_one(a):
    for i in prange(a.size):
        a[i] += 1.0

a = np.zeros(64)
add_one(a)
times = []
for _ in range(500):
    t = time.perf_counter()
    add_one(a)
    times.append(time.perf_counter() - t)
print(numba.threading_layer(), np.median(times))
"""
launch = {}
for chosen in ("minivgg", "workqueue"):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    if chosen == "workqueue":
        env["NUMBA_THREADING_LAYER"] = "workqueue"
    layer, seconds = subprocess.run([sys.executable, "-c", LAUNCH], env=env,
                                    capture_output=True, text=True,
                                    check=True).stdout.split()[-2:]
    launch[chosen] = float(seconds)
    print(f"   {chosen + ' picks' if chosen == 'minivgg' else 'forced':14s} {layer:9s}: "
          f"one launch of a 64-element parallel loop takes {float(seconds) * 1e6:6.1f} us")
print(f"   a hundred launches, as in a training step: {100 * launch['minivgg'] * 1e3:.2f} ms "
      f"against {100 * launch['workqueue'] * 1e3:.2f} ms")
say("""
    Set NUMBA_THREADING_LAYER to choose yourself (a GOMP_SPINCOUNT of yours is kept).
""")

mv.set_backend("auto")
done()
