"""Lesson 05 -- max-pooling: the forward pass, the argmax routing of the gradient, ties.

    python lessons/05_max_pooling.py
"""

# %%
from _common import FAST, done, ink, load_images, np, out_dir, plt, save, say, section, title

import minivgg as mv
from minivgg.gradcheck import check_layer
from minivgg.kernels.reference import maxpool_naive
from minivgg.layers import Conv2D, MaxPool2D, ReLU

FIGURES = ["routing.png", "pooled_picture.png"]
OUT = out_dir("05_max_pooling")
mv.set_cpu_kernels("numpy")   # the readable reference kernels

title("Lesson 05: max-pooling keeps the largest value of each window")
x = np.array([[1, 3, 2, 0],
              [4, 2, 1, 5],
              [0, 6, 8, 7],
              [2, 1, 3, 4]], dtype=np.float64)[None, None]
pool = MaxPool2D(2, 2)
y = pool.forward(x, training=True)
argmax = pool.cache[0]
print("   x (4 x 4):\n   " + str(x[0, 0].astype(int)).replace("\n", "\n   "))
print("   y = MaxPool2D(2, 2)(x), one maximum per 2 x 2 window:\n   "
      + str(y[0, 0].astype(int)).replace("\n", "\n   "))
print(f"   the loops of reference.maxpool_naive agree: {np.array_equal(y, maxpool_naive(x))}")
print("   argmax, the position i*2 + j of each maximum inside its window (kept for backward):\n"
      "   " + str(argmax[0, 0]).replace("\n", "\n   "))

# %% Backward: the gradient goes only to the winner
section("Backward: the gradient goes only to the winner")
say("""
    y = max(a, b, c, d) changes only if the largest entry changes (the others are not
    touching the output), so dy/d(winner) = 1 and dy/d(others) = 0: backward routes each
    output gradient to the argmax position and writes zeros elsewhere.
""")
dout = np.array([[10., 20.], [30., 40.]])[None, None]
dx = pool.backward(dout)
print("   dout:\n   " + str(dout[0, 0].astype(int)).replace("\n", "\n   "))
print("   dx = pool.backward(dout):\n   " + str(dx[0, 0].astype(int)).replace("\n", "\n   "))
print(f"   sum(dx) = {dx.sum():g} = sum(dout) = {dout.sum():g}: nothing lost, nothing copied")

fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
for ax, arr, name in ((axes[0], x[0, 0], "x, winners circled"), (axes[1], y[0, 0], "y = max"),
                      (axes[2], dx[0, 0], "dx = routed dout")):
    im = ax.imshow(arr, cmap="Blues")
    for (r, c), v in np.ndenumerate(arr):
        ax.text(c, r, int(v), ha="center", va="center", fontsize=13, color=ink(im, v))
    ax.set_title(name)
    ax.set_xticks([])
    ax.set_yticks([])
for (r, c), a in np.ndenumerate(argmax[0, 0]):
    axes[0].add_patch(plt.Circle((2 * c + a % 2, 2 * r + a // 2), 0.4, fill=False,
                                 ec="tab:red", lw=2))
for ax in (axes[0], axes[2]):
    ax.axhline(1.5, color="k")
    ax.axvline(1.5, color="k")
save(fig, OUT, FIGURES[0])

# %% Ties
section("Ties")
tie = np.full((1, 1, 2, 2), 5.0)
tpool = MaxPool2D(2, 2)
tpool.forward(tie, training=True)
dtie = tpool.backward(np.ones((1, 1, 1, 1)))
print("   a window of four equal values [[5, 5], [5, 5]]; backward of dout = 1 gives\n   "
      + str(dtie[0, 0]).replace("\n", "\n   ") + "\n   the first maximum in row-major order "
      "wins (as np.argmax and PyTorch do)")
h = 1e-4
numeric = []
for k in range(4):
    plus, minus = tie.copy(), tie.copy()
    plus.flat[k] += h
    minus.flat[k] -= h
    numeric.append((maxpool_naive(plus) - maxpool_naive(minus)).item() / (2 * h))
print(f"   centred differences at the tie give {np.round(numeric, 3)}: +h raises the max by h,")
print("   -h leaves it unchanged (another 5 takes over), so each entry measures (h - 0) / 2h.")
say("""
    At a tie the maximum has a kink: no derivative exists, and any split of the gradient
    that sums to 1 is a valid subgradient. Giving it all to one entry is the usual choice.
    Gradient checks must therefore avoid ties (lesson 08). How common are they?
""")
ds = load_images()
n_img = 16 if FAST else 128
imgs = ds.train_images[:n_img].astype(np.float32) / 255
with mv.no_grad():                      # inference only: no caches kept
    features = ReLU()(Conv2D(3, 16, rng=np.random.default_rng(0))(imgs))
windows = features.reshape(n_img, 16, 16, 2, 16, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4)
tied = (windows == windows.max(axis=1, keepdims=True)).sum(axis=1) > 1
all_zero = (windows.max(axis=1) == 0)
print(f"   after a random Conv2D + ReLU on {n_img} {ds.name} images: {tied.mean():.1%} of the "
      f"{len(windows):,} pooling windows have a tied maximum; {all_zero.mean():.1%} are all "
      "zero (ReLU), where the gradient is 0 anyway")

# %% Overlapping windows accumulate
section("Overlapping windows accumulate")
ov = MaxPool2D(3, 2)
xo = np.random.default_rng(2).integers(0, 9, (1, 1, 5, 5)).astype(np.float64)
xo[0, 0, 2, 2] = 9                                   # a peak in the middle, shared by all

ov.forward(xo, training=True)
do = ov.backward(np.ones((1, 1, 2, 2)))
print("   MaxPool2D(3, stride=2) on a 5 x 5 input with its peak 9 in the centre:\n   "
      + str(xo[0, 0].astype(int)).replace("\n", "\n   "))
print("   its four 3 x 3 windows all contain the centre; backward of dout = ones gives dx =\n   "
      + str(do[0, 0].astype(int)).replace("\n", "\n   "))
print(f"   the centre won {int(do[0, 0, 2, 2])} windows and collects {int(do[0, 0, 2, 2])} "
      "gradients, added: with stride < kernel, backward must accumulate (+=).")

# %% Checked away from ties
section("Checked away from ties")
xr = np.random.default_rng(1).permutation(2 * 2 * 6 * 6).reshape(2, 2, 6, 6) * 0.01
for k, s in ((2, 2), (3, 2)):
    errs = check_layer(MaxPool2D(k, s), xr.astype(np.float64), eps=1e-6)
    print(f"   MaxPool2D({k}, {s}) on distinct values (gaps 0.01 >> h = 1e-6): "
          f"relative error {errs['input']:.1e}")

pooled = [imgs[:1]]
with mv.no_grad():
    for _ in range(3):
        pooled.append(MaxPool2D(2, 2)(pooled[-1]))
fig, axes = plt.subplots(1, 4, figsize=(9, 2.6))
for ax, p in zip(axes, pooled):
    ax.imshow(p[0].transpose(1, 2, 0))
    ax.set_title(f"{p.shape[2]} x {p.shape[3]}")
    ax.axis("off")
fig.suptitle("a picture max-pooled 2 x 2 again and again (VGG halves the size per block)")
save(fig, OUT, FIGURES[1])
done()
