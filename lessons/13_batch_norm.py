"""Lesson 13 -- batch normalisation: the forward per channel, the backward through mu and
var, running statistics, training versus evaluation mode, and why it lets a small VGG
train at lr 0.05.

    python lessons/13_batch_norm.py
"""

# %%
import math
import time

from _common import (
    FAST,
    chance,
    done,
    epochs_for,
    load_images,
    np,
    out_dir,
    plt,
    report_test_accuracy,
    save,
    say,
    section,
    take,
    title,
)

import minivgg as mv
from minivgg.data import DataLoader, Normalize
from minivgg.gradcheck import check_layer, relative_error
from minivgg.layers import BatchNorm2D, Conv2D
from minivgg.models import vgg
from minivgg.optim import SGD
from minivgg.train import TrainingDiverged, evaluate, train_step

FIGURES = ["per_channel.png", "running_statistics.png", "with_and_without.png"]
OUT = out_dir("13_batch_norm")
mv.set_cpu_kernels("numba")     # compiled kernels for the training runs (lesson 11)

title("Lesson 13: batch normalisation")
say("""
    Ioffe & Szegedy (2015): after a convolution, standardise each channel over the batch,
    then let the network pick the scale and shift it wants back. VGG predates it (the
    paper trained without), but every VGG on CIFAR today uses it: vgg(..., batch_norm=True)
    puts a BatchNorm2D between each convolution and its ReLU.
""")

# %% The forward pass, one channel at a time
section("The forward pass, one channel at a time")
rng = np.random.default_rng(0)
n, c, s = 4, 3, 5
offsets, spreads = np.array([5.0, -2.0, 0.0]), np.array([3.0, 0.5, 1.0])
x = rng.standard_normal((n, c, s, s)) * spreads[None, :, None, None] \
    + offsets[None, :, None, None]                         # channels on different scales
bn = BatchNorm2D(c, dtype=np.float64)
bn.gamma.data[:] = [1.0, 2.0, 0.5]
bn.beta.data[:] = [0.0, 1.0, -1.0]
m = n * s * s                                              # values per channel
mu = x.mean(axis=(0, 2, 3))                                # (C,): over N, H and W
var = ((x - mu[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
xhat = (x - mu[None, :, None, None]) / np.sqrt(var + bn.eps)[None, :, None, None]
y_hand = bn.gamma.data[None, :, None, None] * xhat + bn.beta.data[None, :, None, None]
bn.train()
y = bn.forward(x)
print(f"   x {x.shape}: each channel's mean and variance are taken over its "
      f"N*H*W = {n}*{s}*{s} = {m} values")
for k in range(c):
    print(f"   channel {k}: mean {mu[k]:+.3f}, std {math.sqrt(var[k]):.3f} -> xhat mean "
          f"{xhat[:, k].mean():+.1e}, std {xhat[:, k].std():.4f} -> y = {bn.gamma.data[k]:g} "
          f"* xhat + {bn.beta.data[k]:+g}: mean {y[:, k].mean():+.3f}, std {y[:, k].std():.3f}")
print(f"   BatchNorm2D.forward against these lines: max difference "
      f"{np.abs(y - y_hand).max():.1e}")
say("""
    xhat has mean 0 and variance 1 in every channel (eps = 1e-5 under the square root
    keeps a constant channel from dividing by zero); gamma and beta, learned like any
    weight, set the scale and shift the next layer sees.
""")
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
for k in range(c):
    axes[0].hist(x[:, k].ravel(), bins=20, histtype="step", lw=1.6, label=f"channel {k}")
    axes[1].hist(xhat[:, k].ravel(), bins=20, histtype="step", lw=1.6, label=f"channel {k}")
axes[0].set_title("x: each channel on its own scale")
axes[1].set_title("xhat = (x - mu) / sqrt(var + eps)")
for ax in axes:
    ax.set_xlabel("value")
    ax.legend(fontsize=8)
axes[0].set_ylabel(f"number of values (of {m} per channel)")
save(fig, OUT, FIGURES[0])

# %% The backward pass, step by step
section("The backward pass, derived step by step")
say("""
    Every value of a channel moved mu and var, and mu and var moved every xhat: the
    gradient of one input has three paths. Walk the forward graph backwards, one node
    at a time (sums over the M values of the channel; dy is the upstream gradient):

        y = gamma * xhat + beta    dbeta = sum(dy)      dgamma = sum(dy * xhat)
                                   dxhat = dy * gamma
        xhat = (x - mu) * istd     istd = (var + eps)^(-1/2)
                                   dvar  = sum(dxhat * (x - mu)) * (-1/2) (var + eps)^(-3/2)
                                   dmu   = -sum(dxhat) * istd + dvar * mean(-2 (x - mu))
        var = mean((x - mu)^2)     dx    = dxhat * istd            (the direct path)
        mu = mean(x)                     + dvar * 2 (x - mu) / M    (through var)
                                         + dmu / M                  (through mu)
""")
dy = rng.standard_normal(x.shape)
bc = (None, slice(None), None, None)                       # broadcast a (C,) over NCHW
centred, istd = x - mu[bc], 1.0 / np.sqrt(var + bn.eps)
axes_ = (0, 2, 3)
dbeta = dy.sum(axis=axes_)
dgamma = (dy * xhat).sum(axis=axes_)
dxhat = dy * bn.gamma.data[bc]
dvar = (dxhat * centred).sum(axis=axes_) * -0.5 * (var + bn.eps) ** -1.5
dmu = -(dxhat * istd[bc]).sum(axis=axes_) + dvar * (-2 * centred).mean(axis=axes_)
direct = dxhat * istd[bc]
through_var = dvar[bc] * 2 * centred / m
through_mu = dmu[bc] / m
dx_hand = direct + through_var + through_mu
dx = bn.backward(dy)
print(f"   mean(-2 (x - mu)) is {np.abs((-2 * centred).mean(axis=axes_)).max():.0e}: zero, "
      "since x - mu has mean 0, so dmu is the first term alone")
print(f"   the layer's compact formula gamma * istd / M * (M dy - dbeta - xhat dgamma) vs the "
      f"three paths: max difference {np.abs(dx - dx_hand).max():.1e}")
print(f"   dgamma {np.abs(bn.gamma.grad - dgamma).max():.1e}, dbeta "
      f"{np.abs(bn.beta.grad - dbeta).max():.1e} off the hand-derived ones")
print(f"   size of each path (mean |.|): direct {np.abs(direct).mean():.3f}, through var "
      f"{np.abs(through_var).mean():.3f}, through mu {np.abs(through_mu).mean():.3f}")
print(f"   treating mu and var as constants (the direct path only) would be wrong by a "
      f"relative error of {relative_error(direct, dx):.2f}\n   with this random dy, far above "
      "the 1e-7 a gradient check allows (lesson 08)")
errors = check_layer(BatchNorm2D(c, dtype=np.float64), x)
print("   check_layer (centred differences, float64, training mode): "
      + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()) + "  (passes: all < 1e-7)")
errors = check_layer(BatchNorm2D(c, dtype=np.float64), x, training=False)
print("   and in evaluation mode, where mu and var are the running constants: "
      + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))

# %% Running statistics
section("Running statistics")
say("""
    At test time there may be one image, or a batch of one class: its own statistics
    would be meaningless. So in training each forward also moves running averages,
    running = (1 - momentum) * running + momentum * batch statistic (momentum 0.1, and
    the variance's unbiased estimate var * M / (M - 1), as PyTorch does), and evaluation
    uses those instead.
""")
true_mean, true_std = 3.0, 2.0
tracker = BatchNorm2D(1, dtype=np.float64)
tracker.train()
means, variances = [], []
batches = 40 if FAST else 60
data_rng = np.random.default_rng(1)
for _ in range(batches):
    tracker.forward(true_mean + true_std * data_rng.standard_normal((8, 1, 4, 4)))
    means.append(float(tracker.running_mean[0]))
    variances.append(float(tracker.running_var[0]))
for k in (1, 10, 30, batches):
    print(f"   after {k:2d} batches: running mean {means[k - 1]:.3f}, running var "
          f"{variances[k - 1]:.3f}; the starting values (0 and 1) still weigh "
          f"0.9^{k} = {0.9 ** k:.3f}")
print(f"   the data: mean {true_mean}, variance {true_std ** 2}")
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(range(1, batches + 1), means, label="running_mean")
ax.plot(range(1, batches + 1), variances, label="running_var")
ax.axhline(true_mean, color="tab:blue", ls=":", label=f"true mean {true_mean:g}")
ax.axhline(true_std ** 2, color="tab:orange", ls=":", label=f"true variance {true_std ** 2:g}")
ax.set_xlabel("training batches seen")
ax.set_ylabel("value")
ax.set_title("BatchNorm2D(momentum=0.1): running statistics")
ax.legend(fontsize=8)
save(fig, OUT, FIGURES[1])

# %% Training versus evaluation mode
section("Training versus evaluation mode: model.train() and model.eval()")
ds = take(load_images(), *((384, 256) if FAST else (2048, 1017)))
normalize = Normalize.from_data(ds.train_images)
net = vgg("A", num_classes=ds.num_classes, input_size=32, head="cifar", width=0.125,
          batch_norm=True, seed=0)
batch_a = normalize(ds.train_images[:16])
batch_b = np.concatenate([batch_a[:1], normalize(ds.train_images[16:31])])  # same image 0
pick = np.random.default_rng(6)
with mv.no_grad():                           # no backward in this section: no caches
    net.train()
    for _ in range(20):                      # training-mode forwards fill the running stats
        net(normalize(ds.train_images[pick.choice(len(ds.train_images), 64)]))
    in_a, in_b = net(batch_a)[0], net(batch_b)[0]
    net.eval()
    ev_a, ev_b = net(batch_a)[0], net(batch_b)[0]
print("   the logits of image 0, in two batches that differ in their other 15 images:")
print(f"     model.train() (batch statistics):   max difference {np.abs(in_a - in_b).max():.3f}")
print(f"     model.eval()  (running statistics): max difference {np.abs(ev_a - ev_b).max():.1e}")
say("""
    In training an image's output depends on its batch companions (a little noise that
    also regularises); in evaluation each image is processed on its own, so results do
    not depend on how the test set was batched. Forgetting model.eval() before testing
    is a classic bug: the scores then depend on the batch size.
""")
print("   (a forward in training mode also moves the running statistics, which is why the "
      "line above\n   ran under no_grad() but still changed them: no_grad only drops caches)")

# %% Scale invariance
section("Why it tolerates large learning rates")
xs = np.random.default_rng(4).standard_normal((4, 3, 8, 8))
conv = Conv2D(3, 8, rng=np.random.default_rng(3), dtype=np.float64)
conv2 = Conv2D(3, 8, rng=np.random.default_rng(3), dtype=np.float64)
conv2.weight.data *= 10                                   # the same filters, 10 x larger
upstream = np.random.default_rng(5).standard_normal((4, 8, 8, 8))
grads = []
for layer in (conv, conv2):
    bn_k = BatchNorm2D(8, dtype=np.float64)
    out = bn_k.forward(layer.forward(xs, training=True))
    layer.backward(bn_k.backward(upstream))
    grads.append((out, float(np.linalg.norm(layer.weight.grad))))
print(f"   BN(conv(x; 10 W)) vs BN(conv(x; W)): max difference "
      f"{np.abs(grads[0][0] - grads[1][0]).max():.1e} (the bias is zero here; only the eps "
      "under the root,\n   small beside var, tells the two apart)")
print(f"   the gradient of the weights: |dW| = {grads[0][1]:.4f} for W, {grads[1][1]:.4f} for "
      f"10 W ({grads[0][1] / grads[1][1]:.1f} x smaller)")
say("""
    Batch norm divides out the scale of the weights in front of it: the output cannot
    change when W grows, and the gradient shrinks as 1/|W|. A step that is too large
    grows |W|, which makes the next steps smaller -- a brake built into the layer, and
    every layer's input stays standardised however the weights before it moved. Does
    it matter in practice? The same network with and without it:
""")

# %% With and without, measured
section("With and without batch norm, measured")
epochs = 1 if FAST else epochs_for(ds, 3, 6)
train_loader = DataLoader(ds.train_images, ds.train_labels, batch_size=64, seed=0,
                          transform=normalize, drop_last=True)
test_loader = DataLoader(ds.test_images, ds.test_labels, batch_size=256, shuffle=False,
                         transform=normalize)
runs = [("batch norm, lr 0.05", True, 0.05), ("no batch norm, lr 0.05", False, 0.05),
        ("no batch norm, lr 0.01", False, 0.01), ("no batch norm, lr 0.1", False, 0.1)]
curves, outcomes = {}, {}
for label, batch_norm, lr in runs:
    model = vgg("A", num_classes=ds.num_classes, input_size=32, head="cifar", width=0.125,
                batch_norm=batch_norm, seed=0)
    opt = SGD(model, lr=lr, momentum=0.9, weight_decay=5e-4)
    losses, t0 = [], time.perf_counter()
    try:
        for epoch in range(epochs):
            train_loader.set_epoch(epoch)
            for xb, yb in train_loader:
                losses.append(train_step(model, opt, xb, yb)[0])  # lesson 12's four steps
    except TrainingDiverged as exc:
        print(f"   {label}: diverged ({exc})")
    result = evaluate(model, test_loader)                  # model.eval() + no_grad inside
    curves[label], outcomes[label] = losses, result
    print(f"   {label:23s}: loss {losses[0]:.3f} -> {np.mean(losses[-5:]):.3f} (last 5 "
          f"steps), test accuracy {result['top1']:.1f}%, {time.perf_counter() - t0:.1f} s")
fig, ax = plt.subplots(figsize=(6.5, 3.6))
for label, losses in curves.items():
    smooth = np.convolve(losses, np.ones(5) / 5, mode="valid") if len(losses) > 5 else losses
    ax.plot(smooth, label=f"{label} (test {outcomes[label]['top1']:.0f}%)")
ax.axhline(math.log(10), color="gray", ls=":", label="ln(10): guessing")
ax.set_xlabel("step (the same batches for every run)")
ax.set_ylabel("training loss (mean of 5 steps)")
ax.set_title(f"VGG-A width 0.125, {epochs} epoch(s) of {len(ds.train_images)} images")
ax.legend(fontsize=8)
save(fig, OUT, FIGURES[2])
base = 100 * chance(ds.test_labels)
without = {k: v["top1"] for k, v in outcomes.items() if k.startswith("no ")}
best_without = max(without, key=without.get)
stuck = [k for k, v in without.items() if v < 1.5 * base]
bn_top1 = outcomes["batch norm, lr 0.05"]["top1"]
print(f"   same network, batches and start: with batch norm, lr 0.05 reached {bn_top1:.1f}%; "
      f"without it,\n   the best learning rate ({best_without.split(', ')[1]}) reached "
      f"{without[best_without]:.1f}%")
if stuck:
    print(f"   within 1.5 x chance ({base:.1f}%) at the end: {', '.join(stuck)}")
failed = "; the largest failed" if "no batch norm, lr 0.1" in stuck else ""
say(f"""
    Without batch norm the learning rate must be searched for{failed}. With it a large
    one just works -- which is why `minivgg train` and lesson 14 use batch norm with
    lr 0.05.
""")
bn_result = outcomes["batch norm, lr 0.05"]
report_test_accuracy(round(bn_result["top1"] * bn_result["n"] / 100), ds.test_labels,
                     "with batch norm, lr 0.05")
done()
