"""Lesson 07 -- Dense layers and softmax cross-entropy: log-sum-exp, and the first loss.

    python lessons/07_dense_softmax.py
"""

# %%
import math

from _common import FAST, done, load_images, np, out_dir, plt, save, say, section, title

import minivgg as mv
from minivgg.data import Normalize
from minivgg.gradcheck import check_layer, relative_error
from minivgg.layers import Dense, Flatten
from minivgg.losses import SoftmaxCrossEntropy
from minivgg.models import Sequential, vgg

FIGURES = ["softmax.png", "first_loss.png"]
OUT = out_dir("07_dense_softmax")
mv.set_cpu_kernels("numpy")   # the readable reference kernels

title("Lesson 07: from features to class scores to a loss")
# %% Dense: y = x @ W + b
section("Dense: y = x @ W + b")
rng = np.random.default_rng(0)
fc = Dense(5, 3, rng=rng, dtype=np.float64)
x = rng.standard_normal((4, 5))
print(f"   x {x.shape} @ W {fc.weight.shape} + b {fc.bias.shape} -> y {fc.forward(x).shape}")
say("""
    Backward:  dW = x.T @ dout  (5, 3)    db = dout.sum(0)  (3,)    dx = dout @ W.T  (4, 5)
    (each formula is the only product of the available arrays with the right shape).
""")
errs = check_layer(fc, x)
print("   gradient check: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))

# %% Softmax, and why it must be shifted
section("Softmax, and why it must be shifted")
z = np.array([1000.0, 1001.0, 1002.0])
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.exp(z) / np.exp(z).sum()
    naive_lse = np.log(np.exp(z).sum())
m = z.max()
shifted = np.exp(z - m) / np.exp(z - m).sum()
lse = m + np.log(np.exp(z - m).sum())
print(f"   logits z = {z}")
print(f"   naive   exp(z) / sum exp(z)  = {naive}   (exp(1000) overflows float64: "
      f"max is {np.finfo(np.float64).max:.2e})")
print(f"   shifted exp(z-m) / sum       = {np.round(shifted, 4)}   with m = max z = {m:g}")
print(f"   log-sum-exp: naive {naive_lse}, shifted m + log sum exp(z - m) = {lse:.6f}")
say("""
    Subtracting any constant from every logit leaves the softmax unchanged (it cancels
    between numerator and denominator); subtracting the maximum makes the largest
    exponent exp(0) = 1, so nothing overflows and at least one term is 1 (no 0/0).
""")
loss = SoftmaxCrossEntropy()
huge = np.array([[1e4, 0.0, -1e4]])
for label in (0, 1, 2):
    print(f"   SoftmaxCrossEntropy on logits {huge[0]} with label {label}: "
          f"loss = {loss.forward(huge, np.array([label])) + 0.0:g}")
with np.errstate(under="ignore", divide="ignore"):
    p_naive = np.exp(huge - huge.max()) / np.exp(huge - huge.max()).sum()
    print(f"   -log(softmax) computed from probabilities for label 2: {-np.log(p_naive[0, 2])} "
          "(exp(-2e4) underflows to 0); the fused log-probabilities give the exact 20000")

# %% The gradient: softmax minus one-hot
section("The gradient: softmax minus one-hot")
logits = rng.standard_normal((4, 10))
labels = np.array([3, 1, 4, 1])
value = loss.forward(logits, labels)
grad = loss.backward()
p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
onehot = np.eye(10)[labels]
print(f"   loss {value:.4f}; max |backward - (softmax - onehot) / N| = "
      f"{np.abs(grad - (p - onehot) / 4).max():.1e}; each row sums to "
      f"{np.abs(grad.sum(axis=1)).max():.0e}")
h, numeric = 1e-6, np.zeros_like(logits)
for idx in np.ndindex(*logits.shape):
    up, down = logits.copy(), logits.copy()
    up[idx] += h
    down[idx] -= h
    numeric[idx] = (loss.forward(up, labels) - loss.forward(down, labels)) / (2 * h)
print(f"   against centred differences: relative error {relative_error(grad, numeric):.1e}")

fig, axes = plt.subplots(1, 3, figsize=(10, 2.8), sharey=True)
base = np.array([2.0, 1.0, 0.1, -1.0])
for ax, scale in zip(axes, (0.1, 1.0, 10.0)):
    zz = base * scale
    ax.bar(range(4), np.exp(zz - zz.max()) / np.exp(zz - zz.max()).sum())
    ax.set_title(f"softmax of {scale:g} x {base.tolist()}", fontsize=8)
axes[0].set_ylabel("probability")
save(fig, OUT, FIGURES[0])

# %% The first loss of a fresh network is about ln(10)
section("The first loss of a fresh network is about ln(10)")
ds = load_images()
norm = Normalize.from_data(ds.train_images)
xb = norm(ds.train_images[:64 if FAST else 256])
yb = ds.train_labels[:len(xb)]
k = ds.num_classes
say(f"""
    With small initial weights the logits are all near 0, so the softmax is near uniform,
    p = 1/{k} for every class, and the loss is -ln(1/{k}) = ln({k}) = {math.log(k):.4f}.
    A first loss far from ln({k}) means something is off (wrong scale, wrong labels).
""")
stds = [1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
losses = []
for std in stds:
    model = Sequential(Flatten(), Dense(xb[0].size, k, rng=np.random.default_rng(1), std=std))
    model.eval()                                 # inference: evaluation mode, no caches
    with mv.no_grad():
        scores = model(xb)
    losses.append(loss.forward(scores, yb))
    print(f"   Flatten + Dense({xb[0].size}, {k}), weights N(0, {std:g}^2): logits spread "
          f"(std) {scores.std():6.2f}, first loss {losses[-1]:7.4f}")
net = vgg("A", num_classes=k, input_size=32, head="cifar", width=0.25, seed=0)
net.eval()                                       # dropout off (the cifar head has none)
with mv.no_grad():
    first = loss.forward(net(xb), yb)
print(f"   a fresh VGG-A (width 0.25, He init, Dense N(0, 0.01^2)) on {len(xb)} {ds.name} images: "
      f"{first:.4f} vs ln({k}) = {math.log(k):.4f}")
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.semilogx(stds, losses, "o-", label="Flatten + Dense, measured")
ax.axhline(math.log(k), color="tab:red", ls="--", label=f"ln({k}) = {math.log(k):.3f}")
ax.scatter([0.01], [first], color="k", zorder=3, label="fresh VGG-A (width 0.25)")
ax.set_xlabel("standard deviation of the initial weights")
ax.set_ylabel("first loss")
ax.legend(fontsize=8)
save(fig, OUT, FIGURES[1])
done()
