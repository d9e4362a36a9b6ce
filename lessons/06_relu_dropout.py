"""Lesson 06 -- ReLU and Dropout: two layers that are all about masks.

    python lessons/06_relu_dropout.py
"""

# %%
from _common import FAST, done, load_images, np, out_dir, plt, save, say, section, title

import minivgg as mv
from minivgg.gradcheck import check_layer
from minivgg.layers import Conv2D, Dense, Dropout, ReLU

FIGURES = ["relu.png", "dropout_masks.png", "inverted_scaling.png"]
OUT = out_dir("06_relu_dropout")
mv.set_cpu_kernels("numpy")   # the readable reference kernels

title("Lesson 06: ReLU and Dropout")
# %% ReLU: y = max(x, 0)
section("ReLU: y = max(x, 0)")
relu = ReLU()
x = np.linspace(-2, 2, 9)
y = relu.forward(x, training=True)
mask = relu.cache
dx = relu.backward(np.ones_like(x))
print(f"   x    = {x}")
print(f"   y    = {y}")
print(f"   mask = {mask.astype(int)}   (x > 0, the only thing backward keeps)")
print(f"   dx   = {dx}   (backward of ones: the mask; at exactly 0 the slope is taken as 0)")

ds = load_images()
imgs = ds.train_images[: 8 if FAST else 64].astype(np.float32) / 255
with mv.no_grad():                              # no backward through this convolution
    pre = Conv2D(3, 32, rng=np.random.default_rng(0))(imgs)
act = ReLU()
post = act.forward(pre, training=True)
print(f"   on a random Conv2D's output for {len(imgs)} {ds.name} images: "
      f"{1 - act.cache.mean():.1%} of the {post.size:,} activations are zeroed")
print(f"   the cached mask is bool: {act.cache.nbytes / 2**20:.2f} MiB, a quarter of the "
      f"float32 input's {pre.nbytes / 2**20:.2f} MiB")
fig, axes = plt.subplots(1, 2, figsize=(8, 3))
t = np.linspace(-3, 3, 601)
with mv.no_grad():
    axes[0].plot(t, ReLU()(t))
axes[0].set_title("ReLU: y = max(x, 0)")
axes[1].plot(t, (t > 0).astype(float), color="tab:orange")
axes[1].set_title("its derivative: the mask [x > 0]")
axes[1].set_ylim(-0.1, 1.1)
save(fig, OUT, FIGURES[0])

# %% Dropout: zero each activation with probability p
section("Dropout: zero each activation with probability p")
say("""
    During training Dropout(p) draws keep ~ Bernoulli(1 - p) per activation and returns
    x * keep / (1 - p). The division is the "inverted" part: the expected output is
    (1 - p) * x / (1 - p) = x, so at evaluation the layer can simply pass x through.
""")
say("""
    Which of the two a layer does is its MODE, as in PyTorch: layer.train() (the default)
    and layer.eval(), and the same for a whole model (model.eval() sets every layer).
    forward(x, training=True/False) overrides the mode for one call.
""")
drop = Dropout(p=0.5, rng=np.random.default_rng(0))
ones = np.ones((1, 16))
print(f"   Dropout(0.5) on 16 ones, drop.train(): {drop.train()(ones)[0]}")
print(f"   the same layer after drop.eval():      {drop.eval()(ones)[0]}")
print(f"   evaluation returns the input object itself: {drop(ones) is ones}")
drop.train()
big = np.ones((1000, 1000))
for p in (0.1, 0.5, 0.9):
    yb = Dropout(p, rng=np.random.default_rng(1)).forward(big, training=True)
    print(f"   p = {p}: fraction zeroed {np.mean(yb == 0):.4f}, kept values are "
          f"{yb.max():.3f} = 1 / (1 - p), mean of y {yb.mean():.4f} (x is all ones)")

fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
grey = imgs[0].mean(axis=0, keepdims=True)[None]
axes[0].imshow(grey[0, 0], cmap="gray")
axes[0].set_title("input")
for ax, p in zip(axes[1:], (0.1, 0.5, 0.9)):
    out = Dropout(p, rng=np.random.default_rng(2)).forward(grey, training=True)
    ax.imshow(out[0, 0], cmap="gray")
    ax.set_title(f"p = {p}, kept x {1 / (1 - p):.2f}")
for ax in axes:
    ax.axis("off")
save(fig, OUT, FIGURES[1])

# %% Why 1 / (1 - p): the next layer sees the same average
section("Why 1 / (1 - p): the next layer sees the same average")
rng = np.random.default_rng(3)
h = np.abs(rng.standard_normal((1, 256)))                     # some hidden activations
fc = Dense(256, 10, rng=rng, std=0.1, dtype=np.float64)
drop = Dropout(0.5, rng=rng)
trials = 500 if FAST else 5000
with mv.no_grad():                      # no backward here: keep no caches
    drop.train()
    outs = np.stack([fc(drop(h))[0] for _ in range(trials)])
    drop.eval()
    eval_out = fc(drop(h))[0]
plain = outs * (1 - 0.5)                 # what dropout WITHOUT the rescaling would give
print(f"   the Dense layer's output averaged over {trials} training masks vs its eval output:")
print(f"     inverted dropout: mean |avg - eval| = {np.abs(outs.mean(0) - eval_out).mean():.4f}"
      f"  (eval outputs are of size {np.abs(eval_out).mean():.3f})")
print(f"     no rescaling:     mean |avg - eval| = {np.abs(plain.mean(0) - eval_out).mean():.4f}"
      "  -> evaluation would see inputs twice as large as in training")
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.hist(outs[:, 0], bins=40, alpha=0.6, label="training (inverted dropout)")
ax.hist(plain[:, 0], bins=40, alpha=0.6, label="training, no 1/(1-p)")
ax.axvline(eval_out[0], color="k", ls="--", label="evaluation (no dropout)")
ax.axvline(outs[:, 0].mean(), color="tab:blue")
ax.axvline(plain[:, 0].mean(), color="tab:orange")
ax.set_title("output 0 of the next Dense layer, per mask")
ax.legend(fontsize=7)
save(fig, OUT, FIGURES[2])

# %% Backward uses the same mask
section("Backward uses the same mask")
drop = Dropout(0.5, rng=np.random.default_rng(4))
xs = np.random.default_rng(5).standard_normal((4, 8))
ys = drop.forward(xs, training=True)
dxs = drop.backward(np.ones_like(xs))
print(f"   zeros of y and of dx coincide: {np.array_equal(ys == 0, dxs == 0)}; kept entries "
      f"get gradient {dxs.max():g}")
errs = check_layer(Dropout(0.3, rng=np.random.default_rng(6)), xs)
print(f"   gradient check (mask frozen during the check): relative error {errs['input']:.1e}")
errs = check_layer(ReLU(), xs + np.sign(xs) * 0.01)   # keep every entry >= 0.01 from the kink
print(f"   ReLU gradient check away from 0: relative error {errs['input']:.1e}")
done()
