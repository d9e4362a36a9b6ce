"""Lesson 02 -- im2col: every receptive field becomes one row of a matrix.

    python lessons/02_im2col.py
"""

# %%
import tracemalloc

from _common import FAST, done, np, out_dir, plt, save, say, section, title
from matplotlib.ticker import MaxNLocator

from minivgg.kernels import reference
from minivgg.kernels.reference import conv_output_size, im2col

FIGURES = ["windows_and_columns.png", "padding_and_stride.png", "memory_cost.png"]
OUT = out_dir("02_im2col")

title("Lesson 02: im2col turns a convolution into a matrix product")
x = np.arange(1, 17, dtype=np.float64).reshape(1, 1, 4, 4)   # N=1, C=1, 4 x 4
kernel = np.array([[1, 0, -1],
                   [2, 0, -2],
                   [1, 0, -1]], dtype=np.float64)            # a Sobel edge filter
print("   the image x[0, 0] (4 x 4):\n   " + str(x[0, 0]).replace("\n", "\n   "))
print("   the kernel (3 x 3, Sobel):\n   " + str(kernel).replace("\n", "\n   "))

# %% No padding, stride 1
section("No padding, stride 1")
cols = im2col(x, 3, 3, stride=1, pad=0)
oh = conv_output_size(4, 3, 1, 0)
say(f"""
    A 3 x 3 window fits into a 4 x 4 image at OH x OW = {oh} x {oh} places
    (OH = (H + 2 pad - k) // stride + 1 = (4 + 0 - 3) // 1 + 1 = {oh}). im2col copies
    each window into one row, so cols has {oh * oh} rows (one per output pixel) and
    9 columns (one per kernel weight):
""")
print("   cols = im2col(x, 3, 3) =\n   " + str(cols.astype(int)).replace("\n", "\n   "))
y = (cols @ kernel.reshape(-1)).reshape(oh, oh)
window = x[0, 0, 0:3, 0:3]
print(f"   row 0 is the top-left window flattened: {window.ravel().astype(int)}")
print(f"   y = cols @ kernel.ravel(), reshaped to {oh} x {oh}:\n   "
      + str(y).replace("\n", "\n   "))
print(f"   check by hand, top-left: sum(window * kernel) = {np.sum(window * kernel):g}; "
      f"the loops of reference.conv2d_naive give "
      f"{reference.conv2d_naive(x, kernel[None, None])[0, 0].ravel()}")
print("   all four are -8: the image is a ramp rising by 1 per column, and the Sobel filter "
      "measures\n   that left-right slope, (1 + 2 + 1) x (-2) = -8, wherever it looks")
say("""
    Every output is a dot product of one row with the flattened kernel, so the whole
    convolution is ONE matrix product. With F filters it is cols @ W.T, W of shape
    (F, C*k*k): the workhorse of lessons 03 and 04, run by an optimised BLAS GEMM.
""")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2.2]})
fig.subplots_adjust(wspace=0.3)
axes[0].imshow(x[0, 0], cmap="Greys", vmin=-8, vmax=40)   # light: coloured text stays legible
for (r, c), v in np.ndenumerate(x[0, 0]):
    axes[0].text(c, r, int(v), ha="center", va="center")
colours = ["tab:red", "tab:blue", "tab:green", "tab:orange"]
for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
    d = 0.06 * (k - 1.5)
    axes[0].add_patch(plt.Rectangle((c - 0.5 + d, r - 0.5 + d), 3, 3, fill=False,
                                    lw=2, ec=colours[k]))
axes[0].set_title("4 x 4 image,\nits four 3 x 3 windows")
axes[0].set_xlim(-0.75, 3.75)            # room for the offset window outlines
axes[0].set_ylim(3.75, -0.75)
axes[0].set_xticks(range(4))             # pixel rows and columns are integers
axes[0].set_yticks(range(4))
axes[0].set_xlabel("column")
axes[0].set_ylabel("row")
axes[1].imshow(cols, cmap="Greys", vmin=-8, vmax=40)
for (r, c), v in np.ndenumerate(cols):
    axes[1].text(c, r, int(v), ha="center", va="center", color=colours[r], fontweight="bold")
axes[1].set_yticks(range(4), [f"window {k}" for k in range(4)])
axes[1].set_xticks(range(9), [f"({i},{j})" for i in range(3) for j in range(3)])
axes[1].set_xlabel("kernel offset (i, j)")
axes[1].set_title("cols = im2col(x, 3, 3)\none row per window, one column per kernel offset")
save(fig, OUT, FIGURES[0])

# %% Padding and stride
section("Padding and stride")
cols_p = im2col(x, 3, 3, stride=1, pad=1)
cols_s = im2col(x, 3, 3, stride=2, pad=1)
print(f"   pad=1, stride=1: cols {cols_p.shape} -> output "
      f"{conv_output_size(4, 3, 1, 1)} x {conv_output_size(4, 3, 1, 1)} (the size is kept: "
      "VGG's 3 x 3 convolutions all use pad 1)")
print("   its first row, the window centred on pixel (0, 0), reads zeros from the border:",
      cols_p[0].astype(int))
zeros = int((cols_p == 0).sum())       # the image holds 1..16, so every zero is padding
print(f"   of the {cols_p.size} entries of this padded cols (stride 1), {zeros} are padding "
      f"zeros ({zeros / cols_p.size:.0%})")
print(f"   pad=1, stride=2: cols {cols_s.shape} -> output "
      f"{conv_output_size(4, 3, 2, 1)} x {conv_output_size(4, 3, 2, 1)}: every other window")
zeros_s = int((cols_s == 0).sum())
print(f"   of its {cols_s.size} entries, {zeros_s} are padding zeros "
      f"({zeros_s / cols_s.size:.0%})")

x2 = np.stack([x[0, 0], 100 + x[0, 0]])[None]                # two channels
cols2 = im2col(x2, 3, 3, stride=1, pad=0)
print(f"   two channels: cols {cols2.shape}; columns run (c, i, j), channel 0's nine first:")
print("   row 0 =", cols2[0].astype(int))

fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), gridspec_kw={"width_ratios": [1.4, 1]})
for ax, mat, name in ((axes[0], cols_p, f"pad=1, stride=1: {len(cols_p)} windows"),
                      (axes[1], cols_s, f"pad=1, stride=2: {len(cols_s)} windows")):
    ax.imshow(mat, cmap="Greys", vmin=-8, vmax=24, aspect="auto")
    ax.set_xticks(range(9), [f"({i},{j})" for i in range(3) for j in range(3)], fontsize=7)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))   # rows are whole windows
    for (r, c), v in np.ndenumerate(mat):
        ax.text(c, r, int(v), ha="center", va="center", fontsize=7,
                color="tab:red" if v == 0 else "black")
    ax.set_title(f"{name}\ncols {mat.shape}, zeros (red) = padding")
    ax.set_xlabel("kernel offset (i, j)")
    ax.set_ylabel("output pixel")
save(fig, OUT, FIGURES[1])

# %% What it costs: k x k copies of every pixel
section("What it costs: k x k copies of every pixel")
say("""
    Each input pixel sits in up to k*k windows, so cols holds up to k*k copies of it.
    Measured with tracemalloc (the peak of Python/NumPy allocations during the call):
""")
n, c, s = (4, 16, 16) if FAST else (32, 64, 32)
xb = np.random.default_rng(0).standard_normal((n, c, s, s)).astype(np.float32)
ks, ratios, peaks = [1, 3, 5, 7], [], []
for k in ks:
    tracemalloc.start()
    cb = im2col(xb, k, k, stride=1, pad=k // 2)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ratios.append(cb.nbytes / xb.nbytes)
    peaks.append(peak)
    print(f"   k={k}: x {xb.shape} is {xb.nbytes / 2**20:6.1f} MiB; cols {cb.shape} is "
          f"{cb.nbytes / 2**20:7.1f} MiB = {ratios[-1]:.0f} x (k^2 = {k * k}); "
          f"peak during im2col {peak / 2**20:7.1f} MiB")
    del cb
say(f"""
    The peak is {peaks[1] / (ratios[1] * xb.nbytes):.1f} x cols (k=3): the reference kernel
    fills an (N, C, k, k, OH, OW) block and then reorders it into rows. For VGG's 3 x 3
    layers cols is {ratios[1]:.0f} x the input: this is the price
    of turning convolution into one fast GEMM.
""")
fig, ax = plt.subplots(figsize=(6, 3.6))
pos = np.arange(len(ks))
ax.bar(pos - 0.2, ratios, 0.4, color="tab:blue", label="size of cols / size of x (nbytes)")
ax.bar(pos + 0.2, [pk / xb.nbytes for pk in peaks], 0.4, color="tab:orange",
       label="peak allocated during im2col / size of x\n(measured with tracemalloc)")
ax.plot(pos, [k * k for k in ks], "o--", color="tab:red", label="k^2")
ax.set_xticks(pos, [str(k) for k in ks])
ax.set_xlabel("kernel size k")
ax.set_ylabel("memory, multiple of the input")
ax.set_title(f"im2col memory, input {xb.shape} float32")
ax.legend(fontsize=8)
save(fig, OUT, FIGURES[2])
done()
