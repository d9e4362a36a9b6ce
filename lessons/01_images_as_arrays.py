"""Lesson 01 -- images as arrays: NCHW, one picture and its channels, a labelled grid.

    python lessons/01_images_as_arrays.py

The lessons also open as notebooks: each `# %%` line starts a cell (Jupyter with jupytext,
VS Code, PyCharm).
"""

# %%
from _common import FAST, chance, done, load_images, np, out_dir, plt, save, say, section, title

from minivgg.data import Normalize

FIGURES = ["picture_and_channels.png", "grid.png", "pixel_histograms.png"]
OUT = out_dir("01_images_as_arrays")

title("Lesson 01: a picture is a block of numbers")
ds = load_images()
say(f"""
    Loaded {ds!r}.
    A network never sees a picture, only an array. minivgg keeps images the way the
    CIFAR files store them, in NCHW order: N images, C channels, H rows, W columns.
""")
x = ds.train_images
print(f"   train_images: shape {x.shape}, dtype {x.dtype}, {x.nbytes / 2**20:.1f} MiB")
print(f"   train_labels: shape {ds.train_labels.shape}, dtype {ds.train_labels.dtype}, "
      f"values {ds.train_labels.min()}..{ds.train_labels.max()}")
print(f"   classes: {ds.classes}")

# %% One picture
section("One picture")
i = 0
img = x[i]                                             # (C, H, W)
c, h, w = img.shape
print(f"   image {i} is a {ds.classes[ds.train_labels[i]]!r}: shape {img.shape} = "
      f"{c} x {h} x {w} = {img.size} numbers, each a byte 0..255")
print("   the top-left 4 x 4 pixels of its red channel, img[0, :4, :4]:")
print("   " + str(img[0, :4, :4]).replace("\n", "\n   "))
say(f"""
    In memory the red plane comes first ({h * w} bytes), then green, then blue: one CIFAR
    row of {c * h * w} bytes reshaped to (3, 32, 32) is already channel-first. Matplotlib
    wants (H, W, C), so to *draw* it we transpose: img.transpose(1, 2, 0).
""")
strides = img.strides
print(f"   strides of (C, H, W) in bytes: {strides}: one step in C jumps {strides[0]} bytes, "
      f"in H {strides[1]}, in W {strides[2]}")

fig, axes = plt.subplots(1, 4, figsize=(11, 3.2))
axes[0].imshow(img.transpose(1, 2, 0))
axes[0].set_title(f"{ds.classes[ds.train_labels[i]]}\nall three channels")
for k, (ax, name) in enumerate(zip(axes[1:], ("red", "green", "blue"))):
    only = np.zeros_like(img)
    only[k] = img[k]                                   # keep one plane, zero the others
    ax.imshow(only.transpose(1, 2, 0))
    ax.set_title(f"img[{k}] ({name})\nmean {img[k].mean():.0f}")
for ax in axes:
    ax.axis("off")
save(fig, OUT, FIGURES[0])

# %% A batch of labelled pictures
section("A batch of labelled pictures")
rows, cols = (3, 6) if FAST else (6, 10)
rng = np.random.default_rng(0)
pick = rng.choice(len(x), rows * cols, replace=False)
batch = x[pick]
print(f"   a random batch x[pick] has shape {batch.shape}: still NCHW, now N = {len(batch)}")
fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows))
for ax, j in zip(axes.ravel(), pick):
    ax.imshow(x[j].transpose(1, 2, 0))
    ax.set_title(ds.classes[ds.train_labels[j]], fontsize=7)
    ax.axis("off")
save(fig, OUT, FIGURES[1])

for split, labels in (("training", ds.train_labels), ("test", ds.test_labels)):
    counts = np.bincount(labels, minlength=ds.num_classes)
    print(f"   images per class in the {split} split ({counts.sum():,}):",
          ", ".join(f"{n} {k}" for n, k in zip(counts, ds.classes)))
top = int(np.bincount(ds.test_labels).argmax())
say(f"""
    Chance accuracy, as every lesson defines it: what always guessing the most common
    class of the TEST images scores, here {ds.classes[top]!r}: {chance(ds.test_labels):.1%}.
    A trained network must beat that clearly before its accuracy means anything.
""")

# %% From bytes to network inputs
section("From bytes to network inputs")
norm = Normalize.from_data(x)
say("""
    Networks train better on inputs centred at zero with unit spread, so each channel is
    standardised with the mean and standard deviation measured on the *training* images
    (the test images reuse the same numbers).
""")
print(f"   per-channel mean {np.round(norm.mean, 1)}, std {np.round(norm.std, 1)} (pixel units)")
z = norm(batch)
print(f"   after Normalize: dtype {z.dtype}, per-channel mean "
      f"{np.round(z.mean(axis=(0, 2, 3)), 2)}, std {np.round(z.std(axis=(0, 2, 3)), 2)} "
      f"(on this batch of {len(batch)})")
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for k, col in enumerate(("red", "green", "blue")):     # outlines, so all three stay visible
    axes[0].hist(batch[:, k].ravel(), bins=32, color=col, histtype="step", lw=1.6,
                 label=f"{col} (mean {batch[:, k].mean():.0f})")
    axes[1].hist(z[:, k].ravel(), bins=32, color=col, histtype="step", lw=1.6,
                 label=f"{col} (mean {z[:, k].mean():+.2f})")
axes[0].set_title(f"raw bytes (uint8), {len(batch)} images")
axes[0].set_xlabel("pixel value")
axes[1].set_title("after Normalize (float32)")
axes[1].set_xlabel("standardised value (training std units)")
for ax in axes:
    ax.set_ylabel("number of pixels")
    ax.legend(fontsize=8)
save(fig, OUT, FIGURES[2])
done()
