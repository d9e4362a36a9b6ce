"""Lesson 10 -- VGG from the paper's Table 1: configurations as data, parameters, MACs.

    python lessons/10_vgg_table1.py
"""

# %%
from _common import done, np, out_dir, plt, save, say, section, title

from minivgg.layers import Conv2D, Dense
from minivgg.models import ALIASES, VGG_CONFIGS, vgg
from minivgg.models.init import NoDraws

FIGURES = ["table1.png", "params_and_macs.png", "layers_of_D.png"]
OUT = out_dir("10_vgg_table1")

title("Lesson 10: the VGG family is one table of data")
say("""
    Table 1 of Simonyan & Zisserman (2014) lists six networks, A to E, as columns of
    layers. minivgg stores them as lists: a number is a 3 x 3 convolution with that many
    channels (then ReLU), (n, 1) a 1 x 1 convolution, "M" a 2 x 2 max-pool, "LRN" local
    response normalisation. Every network ends with FC-4096, FC-4096, FC-1000.
""")
names = ["A", "A-LRN", "B", "C", "D", "E"]
for name in names:
    print(f"   {name:6s} {VGG_CONFIGS[name]}")
print(f"   aliases: {ALIASES}")


def column(config):
    """Table 1's cells: consecutive layers of one block are one cell."""
    cells, block = [], []
    for item in config:
        if item == "M":
            cells.append(block)
            block = []
        elif item == "LRN":
            block.append("LRN")
        else:
            c, k = item if isinstance(item, tuple) else (item, 3)
            block.append(f"conv{k}-{c}")
    return cells


fig, ax = plt.subplots(figsize=(12, 6.2))
ax.axis("off")
for j, name in enumerate(names):
    depth = sum(1 for i in VGG_CONFIGS[name] if i not in ("M", "LRN")) + 3
    ax.text(j + 0.5, 0.2, f"{name}\n{depth} weight layers", ha="center", fontweight="bold")
    y = 1.0
    for cell in column(VGG_CONFIGS[name]):
        ax.text(j + 0.5, y, "\n".join(cell), ha="center", va="top", fontsize=8,
                bbox={"fc": "#e8f0fe", "ec": "#aac"})
        y += 0.45 * len(cell) + 0.75
        ax.text(j + 0.5, y - 0.3, "maxpool", ha="center", va="center", fontsize=7,
                color="gray")
    ax.text(j + 0.5, y + 0.1, "FC-4096\nFC-4096\nFC-1000\nsoft-max", ha="center", va="top",
            fontsize=8, bbox={"fc": "#fde8e8", "ec": "#caa"})
ax.set_xlim(0, len(names))
ax.set_ylim(y + 2.2, -0.3)
ax.set_title("Table 1, drawn from minivgg.models.VGG_CONFIGS", pad=24)
save(fig, OUT, FIGURES[0])

# %% Parameters and multiply-accumulates, from the built networks
section("Parameters and multiply-accumulates, from the built networks")
say("""
    vgg(name) builds the real network (224 x 224 input, 1000 classes); summary() reads
    every layer's parameter arrays and output shape. NoDraws() skips the random numbers
    (we only count), but the arrays are real: float32, 4 bytes per parameter.
""")
paper = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}
rows = {}
for name in names:
    model = vgg(name, num_classes=1000, input_size=224, rng=NoDraws())
    s = model.summary((3, 224, 224), print_fn=None)
    conv = sum(r.params for r in s.rows if r.kind == "Conv2D")
    fc = sum(r.params for r in s.rows if r.kind == "Dense")
    conv_macs = sum(r.macs for r in s.rows if r.kind == "Conv2D")
    rows[name] = dict(total=s.total_params, conv=conv, fc=fc, macs=s.macs, conv_macs=conv_macs,
                      mib=s.param_bytes / 2**20, act=s.activation_bytes / 2**20)
    if name == "D":
        summary_d, layers_d = s, [(n, l) for n, l in model.named_layers()]
    del model
print(f"   {'config':6s} {'parameters':>14s} {'paper':>6s} {'in convs':>12s} {'in FCs':>13s} "
      f"{'GMACs/img':>10s} {'weights':>9s}")
for name, r in rows.items():
    print(f"   {name:6s} {r['total']:14,d} {paper[name]:5d}M {r['conv']:12,d} {r['fc']:13,d} "
          f"{r['macs'] / 1e9:10.2f} {r['mib']:7.0f}MiB")
fc_d = rows["D"]["fc"]
print(f"   the three FC layers hold {fc_d:,} parameters ({fc_d / 1e6:.1f} M) in every "
      f"configuration: {fc_d / rows['A']['total']:.0%} of A, {fc_d / rows['E']['total']:.0%} "
      "of E")
first_fc = 512 * 7 * 7 * 4096 + 4096
print(f"   the first alone, 512*7*7 -> 4096: {first_fc:,} ({first_fc / rows['D']['total']:.0%} "
      "of D)")
print(f"   but the FCs do only {(rows['D']['macs'] - rows['D']['conv_macs']) / 1e6:.0f} M of D's "
      f"{rows['D']['macs'] / 1e9:.2f} G multiply-accumulates "
      f"({1 - rows['D']['conv_macs'] / rows['D']['macs']:.1%}): parameters live in the head, "
      "work lives in the convolutions")
print(f"   LRN adds no parameters: A-LRN - A = {rows['A-LRN']['total'] - rows['A']['total']}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
x = np.arange(len(names))
axes[0].bar(x, [rows[n]["conv"] / 1e6 for n in names], label="convolutions")
axes[0].bar(x, [rows[n]["fc"] / 1e6 for n in names], bottom=[rows[n]["conv"] / 1e6
                                                             for n in names], label="FC layers")
axes[0].set_xticks(x, names)
axes[0].set_ylabel("parameters (millions)")
axes[0].set_title("where the parameters are")
axes[1].bar(x, [rows[n]["conv_macs"] / 1e9 for n in names], label="convolutions")
axes[1].bar(x, [(rows[n]["macs"] - rows[n]["conv_macs"]) / 1e9 for n in names],
            bottom=[rows[n]["conv_macs"] / 1e9 for n in names], label="FC layers")
axes[1].set_xticks(x, names)
axes[1].set_ylabel("GMACs per 224 x 224 image")
axes[1].set_title("where the work is")
for ax in axes:                            # headroom above the tallest bar, legend inside it
    ax.set_ylim(top=ax.get_ylim()[1] * 1.3)
    ax.legend(loc="upper left", ncols=2, fontsize=8)
save(fig, OUT, FIGURES[1])

# %% Layer by layer: configuration D (VGG-16)
section("Layer by layer: configuration D (VGG-16)")
print("   " + str(summary_d).replace("\n", "\n   "))
weighted = [r for r in summary_d.rows if r.kind in ("Conv2D", "Dense")]
fig, ax = plt.subplots(figsize=(10, 3.6))
xs = np.arange(len(weighted))
ax.bar(xs - 0.2, [r.params / 1e6 for r in weighted], 0.4, label="parameters (M)")
ax.bar(xs + 0.2, [r.macs / 1e8 for r in weighted], 0.4, label="MACs per image (x 1e8)")
ax.set_xticks(xs, [f"{'conv' if r.kind == 'Conv2D' else 'FC'}\n{r.output_shape[0]}"
                   for r in weighted], fontsize=7)
ax.set_yscale("log")
ax.set_ylim(top=3e3)
ax.set_title("VGG-16 (D): each weight layer's parameters and multiply-accumulates")
ax.legend(loc="upper left", ncols=2)
save(fig, OUT, FIGURES[2])
n_conv = sum(isinstance(layer, Conv2D) for _, layer in layers_d)
n_fc = sum(isinstance(layer, Dense) for _, layer in layers_d)
print(f"   D has {n_conv} conv + {n_fc} FC = {n_conv + n_fc} weight layers: hence 'VGG-16'")

# %% The same table at CIFAR size
section("The same table at CIFAR size")
conv_params = {}
for name, width in (("A", 1.0), ("A", 0.25), ("D", 0.25)):
    small = vgg(name, num_classes=10, input_size=32, head="cifar", width=width, rng=NoDraws())
    s = small.summary((3, 32, 32), print_fn=None)
    conv_params[name, width] = sum(r.params for r in s.rows if r.kind == "Conv2D")
    print(f"   vgg({name!r}, 10 classes, 32 x 32, head='cifar', width={width}): "
          f"{s.total_params:,} parameters, {s.macs / 1e6:.1f} M MACs per image")
print(f"   A's convolutions: {conv_params['A', 1.0]:,} parameters at width 1, "
      f"{conv_params['A', 0.25]:,} at width 0.25 "
      f"({conv_params['A', 1.0] / conv_params['A', 0.25]:.1f} x fewer)")
say("""
    At 32 x 32 five poolings leave a 1 x 1 map of 512 * width channels, so the head is one
    Dense layer (512 -> 10 at width 1): the 120 M parameters of the ImageNet head vanish.
    Width 0.25 divides the channels by 4, so each convolution's C_in x C_out weights by
    16. These are the networks lessons 12-16 train.
""")
done()
