"""Lesson 09 -- receptive fields: why VGG stacks small 3x3 convolutions.

    python lessons/09_receptive_fields.py
"""

# %%
from _common import FAST, done, np, out_dir, plt, save, say, section, title
from matplotlib.ticker import MaxNLocator

import minivgg as mv
from minivgg.layers import Conv2D, MaxPool2D
from minivgg.models import VGG_CONFIGS, Sequential, vgg

FIGURES = ["stacked_3x3.png", "vgg_receptive_fields.png", "through_pooling.png"]
OUT = out_dir("09_receptive_fields")
mv.set_cpu_kernels("numpy")   # the readable reference kernels

title("Lesson 09: what one unit can see")
say("""
    The receptive field of a unit is the set of input pixels that can change it. We
    measure it the way backward computes it: put a gradient of 1 on one output unit (a
    one-hot dout), backpropagate, and see which input pixels receive a non-zero gradient.
""")


def receptive_field(layers, size, unit=None):
    """dL/dx for L = the centre unit of the last layer's first channel: (size, size)."""
    net = Sequential(*layers)
    c = layers[0].in_channels
    y = net.forward(np.random.default_rng(0).standard_normal((1, c, size, size)), True)
    dout = np.zeros_like(y)
    h, w = y.shape[2:]
    dout[(0, 0, *(unit or (h // 2, w // 2)))] = 1.0
    return net.backward(dout)[0].sum(axis=0)


# %% Stacked 3 x 3 convolutions, measured
section("Stacked 3 x 3 convolutions, measured")
size = 15
maps, rows = [], []
for depth in (1, 2, 3):
    convs = [Conv2D(1, 1, 3, padding=1, dtype=np.float64) for _ in range(depth)]
    for conv in convs:
        conv.weight.data[:] = 1.0                        # count the paths to each pixel
    grad = receptive_field(convs, size)
    rs, cs = np.nonzero(grad)
    extent = (rs.max() - rs.min() + 1, cs.max() - cs.min() + 1)
    maps.append(grad)
    print(f"   {depth} stacked 3x3 conv(s): the gradient reaches a {extent[0]} x {extent[1]} "
          f"block of the input")
    print("   " + str(grad[7 - depth:8 + depth, 7 - depth:8 + depth].astype(int))
          .replace("\n", "\n   "))
say("""
    With all weights 1 each entry counts the paths from that pixel to the unit: the
    centre is reached in the most ways, the corners in one. Each 3 x 3 layer adds one
    pixel on every side: n layers see (2n + 1) x (2n + 1).
""")

# %% The same view for fewer weights
section("The same view for fewer weights")
c = 64
for depth in (2, 3):
    k = 2 * depth + 1
    stacked = sum(Conv2D(c, c, 3).weight.data.size for _ in range(depth))
    single = Conv2D(c, c, k, padding=depth).weight.data.size
    print(f"   {depth} x conv3x3 ({c} -> {c}): {stacked:,} weights; one conv{k}x{k} with the "
          f"same {k} x {k} view: {single:,}; ratio {stacked / single:.0%} "
          f"(= {depth * 9}/{k * k}), and {depth} ReLUs instead of 1")
say("""
    This is the paper's Sect. 2.3 argument: a stack of three 3 x 3 layers has a 7 x 7
    receptive field with 27/49 = 55 % of the weights of a single 7 x 7 layer, and
    makes the decision function more non-linear.
""")
fig, axes = plt.subplots(1, 3, figsize=(11, 4))
for ax, grad, depth in zip(axes, maps, (1, 2, 3)):
    ax.imshow(grad, cmap="viridis")
    ax.set_title(f"{depth} x conv3x3: sees {2 * depth + 1} x {2 * depth + 1}\n"
                 f"{depth * 9} weights per channel pair\n(one {2 * depth + 1}x{2 * depth + 1}: "
                 f"{(2 * depth + 1) ** 2})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("gradient of one output unit w.r.t. the input (weights all 1: path counts)",
             y=1.02)
save(fig, OUT, FIGURES[0])

# %% Through max-pooling
section("Through max-pooling")
say("""
    Pooling routes the gradient to one winner per window (lesson 05), so one backward
    pass lights up only some pixels. The union over many random inputs shows every
    pixel that *can* influence the unit. Block by block through VGG-A's first three
    blocks (width 1/64, so 1, 2 and 4 channels):
""")
trials = 8 if FAST else 24
a_blocks = VGG_CONFIGS["A"][:VGG_CONFIGS["A"].index("M", 4) + 1]   # up to the 3rd pool
print(f"   layers: {a_blocks}")
layers, cin = [], 1
for item in a_blocks:
    if item == "M":
        layers.append(MaxPool2D(2, 2))
    else:
        cout = max(1, item // 64)
        layers.append(Conv2D(cin, cout, 3, padding=1, dtype=np.float64,
                             rng=np.random.default_rng(len(layers))))
        cin = cout
side = 48
union = np.zeros((side, side), dtype=bool)
net = Sequential(*layers)
reached_after = {}
for t in range(trials):
    y = net.forward(np.random.default_rng(100 + t).standard_normal((1, 1, side, side)), True)
    dout = np.zeros_like(y)
    dout[0, :, y.shape[2] // 2, y.shape[3] // 2] = 1.0
    union |= net.backward(dout)[0, 0] != 0
    reached_after[t + 1] = int(union.sum())
rs, cs = np.nonzero(union)
top, left = rs.min(), cs.min()
measured, measured_w = rs.max() - top + 1, cs.max() - left + 1
box = union[top:top + measured, left:left + measured_w]
missing = np.argwhere(~box)                   # (row, col) inside the box, never reached
print(f"   union of where the gradient lands over {trials} random inputs: it spans a "
      f"{measured} x {measured_w} box, and {int(box.sum())} of the box's "
      f"{box.size} pixels were reached")
steps = sorted({max(1, trials // 3), max(1, 2 * trials // 3), trials})
print("   pixels reached after " + ", ".join(f"{t} inputs: {reached_after[t]}" for t in steps))
if len(missing):
    print(f"   the {len(missing)} never reached (row, col inside the box): "
          f"{[tuple(int(v) for v in m) for m in missing[:6]]}{' ...' if len(missing) > 6 else ''}")
    corners = np.array([[0, 0], [0, measured_w - 1], [measured - 1, 0],
                        [measured - 1, measured_w - 1]])
    far = int(max(np.abs(corners - m).max(axis=1).min() for m in missing))
    grew = reached_after[trials] - reached_after[steps[-2]]
    say(f"""
        Each is at most {far} pixel(s) from a corner of the box (Chebyshev distance). A
        corner pixel reaches the unit only if every pooling window on the way picks the
        path through it, so random inputs find it last: the count grew by {grew} over
        the last {trials - steps[-2]} inputs. Such a pixel can influence the unit; these
        inputs just never made it win.
    """)


def rf_table(config, size=224):
    """Receptive field after each layer of a configuration: r += (k - 1) * jump."""
    model = vgg(config, num_classes=10, input_size=size, head="cifar", width=1 / 64)
    r, jump, out = 1, 1, []
    for name, layer in model["features"].named_layers():
        if isinstance(layer, (Conv2D, MaxPool2D)):
            k, s = layer.kernel_size, layer.stride
            r, jump = r + (k - 1) * jump, jump * s
            out.append((name, type(layer).__name__, k, r))
    return out


formula = [r for _, kind, _, r in rf_table(a_blocks)][-1]
print(f"   the formula r <- r + (k - 1) * jump, jump <- jump * stride gives {formula} "
      f"({'agrees' if formula == measured else 'DISAGREES'})")
fig, ax = plt.subplots(figsize=(4.4, 4.2))
ax.imshow(union, cmap="Greys")
ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), measured_w, measured, fill=False,
                           ec="tab:blue", lw=1.5, label=f"the {measured} x {measured_w} box"))
if len(missing):
    ax.scatter(left + missing[:, 1], top + missing[:, 0], s=12, color="tab:red",
               label=f"{len(missing)} never reached")
ax.set_title(f"A, 3 blocks: {int(box.sum())} of the {box.size} pixels of\nthe field reached "
             f"(union over {trials} inputs)", fontsize=10)
ax.set_xlabel("input column")
ax.set_ylabel("input row")
ax.legend(fontsize=7, loc="lower left")
save(fig, OUT, FIGURES[2])

# %% Receptive fields through Table 1
section("Receptive fields through Table 1")
fig, ax = plt.subplots(figsize=(6.5, 3.6))
for name in ("A", "B", "C", "D", "E"):
    table = rf_table(name)
    convs = [r for _, kind, _, r in table if kind == "Conv2D"]
    ax.plot(range(1, len(convs) + 1), convs, "o-", ms=3, label=name)
    print(f"   {name}: {len(convs)} conv layers; receptive field of the last conv "
          f"{convs[-1]} x {convs[-1]}, after the last pool {table[-1][3]} x {table[-1][3]}")
ax.axhline(224, color="k", ls=":", label="224 (ImageNet crop)")
ax.set_xlabel("convolution number")
ax.xaxis.set_major_locator(MaxNLocator(integer=True))
ax.set_ylabel("receptive field (pixels)")
ax.set_title("VGG configurations: receptive field per conv layer")
ax.legend(fontsize=8)
save(fig, OUT, FIGURES[1])
print("   (C's 1x1 layers add depth without adding to the field: its curve has flat steps)")
done()
