"""Lesson 03 -- the convolution forward pass: loops, then im2col + GEMM; 1x1 convolutions.

    python lessons/03_convolution.py
"""

# %%
from _common import FAST, done, load_images, np, out_dir, plt, save, say, section, timed, title

import minivgg as mv
from minivgg.kernels.reference import conv2d_naive, im2col
from minivgg.layers import Conv2D, Dense
from minivgg.models import VGG_CONFIGS

FIGURES = ["loops_vs_gemm.png", "one_by_one_mixing.png"]
OUT = out_dir("03_convolution")
mv.set_cpu_kernels("numpy")    # the readable reference kernels; lesson 11 compares backends

title("Lesson 03: convolution forward = im2col + one matrix product")
say("""
    A convolution layer has F filters of shape (C, k, k). Output pixel (n, f, y, x) is the
    sum over the C*k*k window of input times filter, plus a bias:

        out[n, f, y, x] = b[f] + sum_{c,i,j} W[f, c, i, j] * xpad[n, c, y*s + i, x*s + j]

    reference.conv2d_naive computes exactly this with four nested loops. Conv2D instead
    builds cols = im2col(x) (lesson 02) and multiplies: Y = cols @ W.reshape(F, -1).T + b.

    No backward follows in this lesson, so the forward passes run inside
    `with mv.no_grad():`, which tells every layer to keep no cache for backward.
""")

# %% Same numbers
section("Same numbers")
rng = np.random.default_rng(0)
n, c, s, f = (2, 8, 12, 8) if FAST else (4, 32, 24, 32)
x = rng.standard_normal((n, c, s, s)).astype(np.float32)
for stride, pad in ((1, 1), (2, 1), (1, 0)):
    conv = Conv2D(c, f, kernel_size=3, stride=stride, padding=pad, rng=rng)
    conv.bias.data[:] = rng.standard_normal(f)
    with mv.no_grad():
        y_gemm = conv(x)
    y_loop = conv2d_naive(x, conv.weight.data, conv.bias.data, stride, pad)
    err = np.abs(y_gemm - y_loop).max()
    print(f"   stride {stride}, pad {pad}: output {y_gemm.shape}; "
          f"max |im2col+GEMM - loops| = {err:.2e} (float32 rounding: sums in another order)")

# %% How much faster
section("How much faster")
conv = Conv2D(c, f, kernel_size=3, padding=1, rng=rng)
t_loop = timed(lambda: conv2d_naive(x, conv.weight.data, conv.bias.data, 1, 1), repeat=1)
with mv.no_grad():
    t_gemm = timed(lambda: conv(x), repeat=5)
t_cols = timed(lambda: im2col(x, 3, 3, 1, 1), repeat=5)
macs = n * f * c * 9 * s * s
print(f"   x {x.shape}, {f} filters 3x3: {macs / 1e6:.1f} million multiply-accumulates")
print(f"   naive loops      {t_loop * 1e3:9.1f} ms  ({2 * macs / t_loop / 1e9:6.2f} GFLOP/s)")
print(f"   im2col + GEMM    {t_gemm * 1e3:9.1f} ms  ({2 * macs / t_gemm / 1e9:6.2f} GFLOP/s), "
      f"of which im2col {t_cols * 1e3:.1f} ms")
print(f"   speed-up: {t_loop / t_gemm:.0f} x")
say(f"""
    The loops run {n * f * s * s:,} small Python-level dot products; the GEMM runs one
    large product in optimised BLAS code that keeps the CPU's vector units busy.
""")
fig, ax = plt.subplots(figsize=(5.5, 3))
ax.barh(["naive loops", "im2col + GEMM"], [t_loop * 1e3, t_gemm * 1e3],
        color=["tab:gray", "tab:blue"])
ax.set_xscale("log")
ax.set_xlabel("milliseconds per forward pass (log scale)")
ax.set_title(f"x {x.shape}, {f} filters 3x3: {t_loop / t_gemm:.0f} x faster")
save(fig, OUT, FIGURES[0])

# %% A 1 x 1 convolution mixes channels
section("A 1 x 1 convolution mixes channels")
say("""
    With k = 1 a window is a single pixel: the output at (y, x) is a weighted sum of the
    input's channels at that same pixel, i.e. a small Dense layer (C -> F) applied at
    every position. Turning RGB into grey is such a layer, with weights (0.299, 0.587, 0.114).
""")
ds = load_images()
img = ds.train_images[:1].astype(np.float32) / 255          # (1, 3, 32, 32)
grey = Conv2D(3, 1, kernel_size=1, padding=0)
grey.weight.data[:] = np.array([0.299, 0.587, 0.114], np.float32).reshape(1, 3, 1, 1)
with mv.no_grad():
    y_grey = grey(img)
by_hand = np.einsum("c,nchw->nhw", [0.299, 0.587, 0.114], img)
print(f"   Conv2D(3, 1, kernel_size=1) on {img.shape} -> {y_grey.shape}; "
      f"max difference from the per-pixel weighted sum: {np.abs(y_grey[:, 0] - by_hand).max():.1e}")
swap = Conv2D(3, 3, kernel_size=1, padding=0)
swap.weight.data[:] = np.eye(3, dtype=np.float32)[::-1].reshape(3, 3, 1, 1)  # R <-> B
with mv.no_grad():
    y_swap = swap(img)
print(f"   a permutation matrix as weights swaps red and blue: "
      f"max |out[:, 0] - in[:, 2]| = {np.abs(y_swap[:, 0] - img[:, 2]).max():.1e}")

dense = Dense(3, 3)
dense.weight.data[:] = swap.weight.data.reshape(3, 3).T                 # (in, out)
pixels = img.transpose(0, 2, 3, 1).reshape(-1, 3)                        # every pixel a row
with mv.no_grad():
    via_dense = dense(pixels).reshape(1, 32, 32, 3).transpose(0, 3, 1, 2)
print(f"   the same weights in a Dense layer applied pixel by pixel: max difference "
      f"{np.abs(via_dense - y_swap).max():.1e}")

fig, axes = plt.subplots(1, 3, figsize=(8, 3))
axes[0].imshow(img[0].transpose(1, 2, 0))
axes[0].set_title("input (3 channels)")
axes[1].imshow(y_grey[0, 0], cmap="gray")
axes[1].set_title("1x1 conv, 3 -> 1\nweights (.299, .587, .114)")
axes[2].imshow(np.clip(y_swap[0].transpose(1, 2, 0), 0, 1))
axes[2].set_title("1x1 conv, 3 -> 3\nred and blue swapped")
for ax in axes:
    ax.axis("off")
save(fig, OUT, FIGURES[1])

# %% 1 x 1 convolutions in VGG: configuration C
section("1 x 1 convolutions in VGG: configuration C")
print("   C =", VGG_CONFIGS["C"])
one, three = Conv2D(256, 256, 1, padding=0), Conv2D(256, 256, 3)
p1 = sum(p.data.size for p in one.parameters())
p3 = sum(p.data.size for p in three.parameters())
say(f"""
    (256, 1) is a 1 x 1 convolution. Configuration C adds three of them to B, one at the
    end of blocks 3, 4 and 5: extra non-linearity (a ReLU follows) without growing the
    receptive field. A 1 x 1 layer 256 -> 256 has {p1:,} parameters, a 3 x 3 one {p3:,}
    ({p3 / p1:.1f} x). The paper reports D (3 x 3 layers in their place) more accurate
    than C (its Table 3): spatial context matters.
""")
done()
