"""Lesson 18 -- data parallelism: N ranks, one model. Why the shards' averaged gradients
are the whole batch's, what batch norm does across shards, and what the Allreduce costs
next to a step's compute (measured here, modelled for N GPUs).

    python lessons/18_data_parallel.py
    mpirun -n 2 minivgg train --dataset shapes --epochs 3     # the real thing
"""

# %%
import time

from _common import FAST, done, load_images, np, out_dir, plt, save, say, section, take, title

import minivgg as mv
from minivgg.distributed import ThreadGroup, shard_bounds
from minivgg.layers.sync_batch_norm import convert_sync_batchnorm
from minivgg.losses import SoftmaxCrossEntropy
from minivgg.models import VGGSettings, vgg
from minivgg.summary import summarize_settings

FIGURES = ["shard_gradients.png", "batch_norm_shards.png", "allreduce_model.png"]
OUT = out_dir("18_data_parallel")
mv.set_backend("numpy")      # the ranks below are threads of one process: reference kernels

title("Lesson 18: data parallelism")
say("""
    One process trains on a batch of B images. Data parallelism gives each of N processes
    (ranks) its own copy of the model and 1/N of every batch; after backward, the ranks
    add their gradients (an Allreduce) and all take the same step. `mpirun -n N minivgg
    train` does exactly this (minivgg.distributed). Here the ranks are threads of this
    process (minivgg.distributed.ThreadGroup): the same collectives, no launcher needed.
""")

# %% Why the shards' gradients add up to the whole batch's
section("Averaging the shards' gradients is the whole batch's gradient")
say("""
    The loss of a batch is a mean over its images, L = (1/B) sum_i l_i. Cut the batch
    into shards of b_r images; each rank's loss is its own mean L_r = (1/b_r) sum_{i in r}
    l_i, so

        L = sum_r (b_r / B) L_r      and, the gradient being linear,
        dL/dw = sum_r (b_r / B) dL_r/dw.

    With equal shards b_r / B = 1/N: the average of the ranks' gradients. Nothing is
    approximated -- only the order of the additions changes, so float64 agrees to ~1e-16.
""")
ds = take(load_images(n_shapes_train=64, n_shapes_test=16), 16, 4)
rng = np.random.default_rng(0)
x_all = (ds.train_images.astype(np.float64) / 255.0 - 0.5) / 0.25
y_all = ds.train_labels.astype(np.int64)
n_classes = len(ds.classes)
CONFIG = [8, "M", 16, "M", 16, "M"]


def make(batch_norm=False):
    return vgg(CONFIG, n_classes, x_all.shape[2], head="cifar", batch_norm=batch_norm,
               seed=0, dtype=np.float64, in_channels=x_all.shape[1])


def whole_batch_gradient(x, y, batch_norm=False):
    model, loss = make(batch_norm), SoftmaxCrossEntropy()
    loss.forward(model.forward(x, training=True), y)
    model.backward(loss.backward())
    return {k: p.grad.copy() for k, p in model.named_parameters().items()}


def shard_gradients(x, y, ranks, batch_norm=False, sync=False, weighted=True):
    """Each rank: forward and backward on its shard, its gradient scaled by b_r / B (or
    by 1/N when ``weighted`` is False); the sum over the ranks."""
    def rank(comm):
        model, loss = make(batch_norm), SoftmaxCrossEntropy()
        if sync:
            convert_sync_batchnorm(model, comm)
        lo, hi = shard_bounds(len(y), comm.rank, comm.size)
        loss.forward(model.forward(x[lo:hi], training=True), y[lo:hi])
        share = (hi - lo) / len(y) if weighted else 1 / comm.size
        model.backward(loss.backward() * share)
        return {k: p.grad.copy() for k, p in model.named_parameters().items()}
    parts = ThreadGroup(ranks).run(rank)
    return {k: sum(p[k] for p in parts) for k in parts[0]}


def rel_diff(a, b):
    """The largest difference over all gradients, relative to the largest gradient."""
    return max(float(np.abs(a[k] - b[k]).max()) for k in b) / max(float(np.abs(b[k]).max())
                                                                   for k in b)


x, y = x_all[:8], y_all[:8]
want = whole_batch_gradient(x, y)
cases = {}
for ranks in (2, 4):
    cases[f"{ranks} ranks, equal shards"] = rel_diff(shard_gradients(x, y, ranks), want)
x7, y7 = x_all[:7], y_all[:7]
want7 = whole_batch_gradient(x7, y7)
cases["3 ranks, shards 3+2+2, weighted b_r/B"] = rel_diff(shard_gradients(x7, y7, 3), want7)
cases["3 ranks, shards 3+2+2, plain 1/N"] = rel_diff(
    shard_gradients(x7, y7, 3, weighted=False), want7)
for name, err in cases.items():
    print(f"   {name:40s} max relative difference to the whole batch {err:.1e}")
say("""
    Equal shards: the average is exact. Unequal shards (7 images on 3 ranks): the plain
    average over-weights the smaller shards' images; weighting each by b_r / B is exact
    again. minivgg scales each rank's dL/dlogits by b_r / B before backward, so the
    Allreduce is a plain sum.
""")

# %% Batch normalisation across shards
section("What batch norm does across shards")
say("""
    Batch norm breaks the argument above: an image's output depends on the *other* images
    of its batch through the mean and variance. A rank sees only its shard, so by
    default (PyTorch's DDP too) each rank normalises with its shard's statistics -- a
    different network from the single process's, noisier the smaller the shard.
    SyncBatchNorm2D (--sync-bn) adds the shards' sums over the ranks instead (two
    Allreduces forward, one backward, of 2C numbers each) and is exact again.
""")
want_bn = whole_batch_gradient(x, y, batch_norm=True)
bn_cases = {"per-rank statistics, 2 ranks": shard_gradients(x, y, 2, batch_norm=True),
            "per-rank statistics, 4 ranks": shard_gradients(x, y, 4, batch_norm=True),
            "synchronised (--sync-bn), 2 ranks": shard_gradients(x, y, 2, True, sync=True),
            "synchronised (--sync-bn), 4 ranks": shard_gradients(x, y, 4, True, sync=True)}
for name, g in bn_cases.items():
    cases[name] = rel_diff(g, want_bn)
    print(f"   {name:40s} max relative difference to the whole batch {cases[name]:.1e}")
fig, ax = plt.subplots(figsize=(8, 3.6))
names = list(cases)
ax.barh(range(len(names)), [max(v, 1e-17) for v in cases.values()],
        color=["tab:green" if v < 1e-12 else "tab:red" for v in cases.values()])
ax.set_yticks(range(len(names)), names, fontsize=8)
ax.set_xscale("log")
ax.axvline(1e-12, color="k", lw=0.8, ls="--")
ax.set_xlabel("max relative difference to the whole batch's gradient (float64)")
ax.set_title("Shards' gradients against the whole batch's")
save(fig, OUT, FIGURES[0])

conv = make()["features"][0]                # the statistics batch norm would normalise with
h = conv.forward(x_all[:16], training=False)
mean_all, var_all = h.mean(axis=(0, 2, 3)), h.var(axis=(0, 2, 3))
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for shards, marker in ((2, "o"), (4, "s"), (8, "^")):
    for r in range(shards):
        lo, hi = shard_bounds(16, r, shards)
        part = h[lo:hi]
        axes[0].scatter(range(8), part.mean(axis=(0, 2, 3))[:8], marker=marker, s=14,
                        alpha=0.6, label=f"{16 // shards} images per rank" if r == 0 else None)
        axes[1].scatter(range(8), part.var(axis=(0, 2, 3))[:8], marker=marker, s=14, alpha=0.6)
for ax, value, what in ((axes[0], mean_all, "mean"), (axes[1], var_all, "variance")):
    ax.scatter(range(8), value[:8], marker="_", s=400, color="k", label="all 16 (sync)")
    ax.set_xlabel("channel of the first convolution")
    ax.set_title(f"per-shard {what} vs the global one")
axes[0].legend(fontsize=7)
save(fig, OUT, FIGURES[1])
spread = np.std([h[lo:hi].mean(axis=(0, 2, 3)) for lo, hi in
                 (shard_bounds(16, r, 8) for r in range(8))], axis=0).mean()
print(f"   with 2 images per rank the shards' channel means scatter by {spread:.3f} around "
      f"the global ones (whose own size is {np.abs(mean_all).mean():.3f})")

# %% The cost of the Allreduce
section("The cost of an Allreduce next to a step's compute")
say("""
    Every step, every rank sends and receives its whole gradient: P parameters, 4 bytes
    each. A ring Allreduce over N ranks moves 2 (N-1)/N * 4P bytes through each link,
    so with link bandwidth W and per-message latency a it takes about

        t_allreduce = 2 (N-1)/N * 4P / W + 2 (N-1) a,

    nearly independent of N, while the compute per rank shrinks as 1/N for a fixed
    global batch. Measured here first: a training step, and adding two gradient
    buffers in memory, the least a two-process Allreduce on one machine must do.
""")
mv.set_cpu_kernels("numba")
width, batch = (0.125, 16) if FAST else (0.25, 64)
model = vgg("A", 10, 32, head="cifar", width=width, seed=0)
xs = np.random.default_rng(1).standard_normal((batch, 3, 32, 32)).astype(np.float32)
ys = np.random.default_rng(2).integers(0, 10, batch)
loss = SoftmaxCrossEntropy()


def step():
    loss.forward(model.forward(xs, training=True), ys)
    model.backward(loss.backward())


step()                                               # compiles, if needed
t0 = time.perf_counter()
repeats = 2 if FAST else 3
for _ in range(repeats):
    step()
t_step = (time.perf_counter() - t0) / repeats
p_small = model.num_parameters()
s11 = summarize_settings(VGGSettings("A", num_classes=10, input_size=32, head="cifar"))
s16 = summarize_settings(VGGSettings("D", num_classes=1000, input_size=224, head="imagenet"))
a = np.ones(s11.trainable_params, dtype=np.float32)
b = np.ones_like(a)
t0 = time.perf_counter()
for _ in range(3):
    np.add(a, b, out=a)
t_add = (time.perf_counter() - t0) / 3
mem_bw = 3 * a.nbytes / t_add                       # two reads and a write per element
print(f"   here: VGG-11 at width {width} ({p_small:,} parameters), batch {batch}: "
      f"{t_step * 1e3:.0f} ms per forward+backward ({batch / t_step:.0f} images/s)")
print(f"   adding two gradient buffers of VGG-11-CIFAR ({s11.trainable_params / 1e6:.1f} M "
      f"floats, {a.nbytes / 2**20:.0f} MiB): {t_add * 1e3:.1f} ms ({mem_bw / 1e9:.1f} GB/s)")
print(f"   the small VGG's own gradient ({p_small * 4 / 2**20:.1f} MiB) adds in "
      f"{t_add * p_small / s11.trainable_params * 1e3:.2f} ms: "
      f"{100 * (t_add * p_small / s11.trainable_params) / t_step:.2f} % of its step. On "
      "one machine the Allreduce is cheap; benchmarks/bench_mpi.py measures the real one.")

say("""
    On GPUs the compute is ~100x faster and the gradient crosses a link. A model, with
    these *assumed* figures (nominal bandwidths, not measured here): training costs
    ~3x the forward's multiply-accumulates, 2 flops each, at 100 Tflop/s sustained;
    a ring over NVLink at 150 GB/s, PCIe 4.0 at 20 GB/s, 100 Gb/s InfiniBand at
    11 GB/s; latency 10 us a message; batch 128 per GPU at 32x32, 32 per GPU at 224;
    no overlap of communication with backward (DDP's buckets hide part of it).
""")
links = {"NVLink 150 GB/s": 150e9, "PCIe 4.0 20 GB/s": 20e9, "InfiniBand 11 GB/s": 11e9}
nets = {"VGG-11-CIFAR (32x32, 128/GPU)": (s11, 128), "VGG-16 (224x224, 32/GPU)": (s16, 32)}
gpus = np.array([1, 2, 4, 8, 16, 32, 64])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, (name, (s, per_gpu)) in zip(axes, nets.items()):
    t_compute = 3 * 2 * s.macs * per_gpu / 100e12
    print(f"   {name}: {s.trainable_params / 1e6:.1f} M parameters "
          f"({4 * s.trainable_params / 2**20:.0f} MiB of gradient), "
          f"{s.macs / 1e9:.2f} GMAC per image forward -> {t_compute * 1e3:.1f} ms of compute "
          f"per step")
    for link, bw in links.items():
        t_ar = np.where(gpus > 1, 2 * (gpus - 1) / gpus * 4 * s.trainable_params / bw
                        + 2 * (gpus - 1) * 10e-6, 0.0)
        efficiency = t_compute / (t_compute + t_ar)
        ax.plot(gpus, efficiency, marker="o", label=link)
        print(f"      {link:20s} Allreduce at 8 GPUs {t_ar[3] * 1e3:6.1f} ms -> scaling "
              f"efficiency {efficiency[3]:.0%}, at 64 GPUs {efficiency[-1]:.0%}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("GPUs (one rank each)")
    ax.set_title(name, fontsize=9)
    ax.grid(alpha=0.3)
axes[0].set_ylabel("compute / (compute + Allreduce)\n(model, assumed bandwidths)")
axes[0].legend(fontsize=7)
save(fig, OUT, FIGURES[2])
print(f"   VGG-16 has {s16.trainable_params / s11.trainable_params:.0f}x the parameters of "
      f"VGG-11-CIFAR and {s16.macs / s11.macs:.0f}x its compute per image")
say("""
    The small network is the harder one to scale: its compute per image at 32x32 is
    tiny, so its gradient is large next to the work of a step. Over PCIe or a network the
    Allreduce dominates unless it overlaps with backward -- the reason Horovod and DDP
    start the last layers' buckets while the first layers are still computing, and
    minivgg's GradientBuffer keeps the last layers first.
""")
done()
