"""Lesson 16 -- the paper's tricks: LRN (A vs A-LRN), initialising D from a trained A,
and dense evaluation of an image larger than the training crops.

    python lessons/16_paper_tricks.py
"""

# %%
import time

from _common import (
    FAST,
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
from matplotlib.ticker import MaxNLocator

import minivgg as mv
from minivgg.checkpoint import read_checkpoint
from minivgg.data import Compose, DataLoader, HorizontalFlip, Normalize
from minivgg.layers import Conv2D, LocalResponseNorm, MaxPool2D
from minivgg.models import VGG_CONFIGS, init_from, to_dense_eval, vgg
from minivgg.optim import SGD
from minivgg.run import model_from_checkpoint
from minivgg.train import evaluate, train_step

FIGURES = ["lrn_scale.png", "init_from_a.png", "dense_evaluation.png"]
OUT = out_dir("16_paper_tricks")

title("Lesson 16: three tricks from the VGG paper, measured")
mv.set_backend("numba")   # on the CPU, like every lesson (lesson 11 compares backends)
ds = load_images()
epochs = 1 if FAST else 2
ds = take(ds, *((256, 128) if FAST else (2048, 1017)))
n_train, n_test = len(ds.train_images), len(ds.test_images)
normalize = Normalize.from_data(ds.train_images)
test_loader = DataLoader(ds.test_images[:n_test], ds.test_labels[:n_test], batch_size=256,
                         shuffle=False, transform=normalize)
WIDTH = 0.125
SHAPES = ds.name == "shapes" and not FAST   # the offline fallback, normal mode
BATCH_NORM = SHAPES
epochs_d = epochs                            # the two D's (twice A's time per step)
if SHAPES:
    epochs, epochs_d = epochs_for(ds, epochs, 8), 1      # within the minute
    print(f"   (shapes fallback: all five networks get batch norm, the three A's {epochs} "
          f"epochs, the two D's {epochs_d} -- without batch norm they all stay at chance; "
          "each comparison still differs only in what it is about)")
print(f"   {n_train} training images, {n_test} test images, {epochs} epoch(s) per network"
      + (f" ({epochs_d} for D)" if epochs_d != epochs else "") + "; "
      f"width {WIDTH}, " + ("batch norm (not the paper's: see above)" if BATCH_NORM else
                            "no batch norm (the paper had none)") + ", He initialisation")


results = {}                 # label -> test images classified correctly


def build(config, seed=0):
    return vgg(config, num_classes=10, input_size=32, head="cifar", width=WIDTH, seed=seed,
               batch_norm=BATCH_NORM)


def train(model, label, n_epochs=None):
    """SGD with momentum over the same batches (same seed) for every network."""
    loader = DataLoader(ds.train_images[:n_train], ds.train_labels[:n_train], batch_size=64,
                        seed=0, transform=Compose([HorizontalFlip(), normalize]),
                        drop_last=True)
    opt = SGD(model, lr=0.02, momentum=0.9, weight_decay=5e-4)
    losses, t0 = [], time.perf_counter()
    for _ in range(epochs if n_epochs is None else n_epochs):
        for x, y in loader:
            losses.append(train_step(model, opt, x, y)[0])
    seconds = time.perf_counter() - t0
    scored = evaluate(model, test_loader)
    top1 = scored["top1"]
    results[label] = round(top1 * scored["n"] / 100)     # images right
    print(f"   {label:14s}: loss {losses[0]:.3f} -> {np.mean(losses[-5:]):.3f} (mean of the last "
          f"5 steps), test top-1 {top1:.1f}%, {1e3 * seconds / len(losses):.0f} ms per step")
    return losses, top1, seconds / len(losses)


# %% Local response normalisation: A versus A-LRN
section("Local response normalisation: A versus A-LRN")
say("""
    A-LRN is A with AlexNet's LRN after the first convolution: each activation is divided
    by (k + alpha * sum of squares of its 5 channel neighbours)^beta, k = 2, alpha = 1e-4,
    beta = 0.75. What does it do to this network's activations?
""")
a_lrn = build("A-LRN")
layers = list(a_lrn["features"])
at = next(i for i, layer in enumerate(layers) if isinstance(layer, LocalResponseNorm))
first_conv, lrn = layers[0], layers[at]
assert isinstance(first_conv, Conv2D)
x0 = normalize(ds.train_images[:32]).astype(np.float32)
relu_out = x0                    # through conv (batch norm) ReLU, up to the LRN
for layer in layers[:at]:
    relu_out = layer.forward(relu_out, False)
lrn_out = lrn.forward(relu_out, training=False)
active = relu_out > 0
scale = (lrn_out[active] / relu_out[active])
print(f"   on 32 normalised images: LRN multiplies each active unit by {scale.mean():.4f} on "
      f"average (min {scale.min():.4f}, max {scale.max():.4f}); 2^-0.75 = {2 ** -0.75:.4f}")
say("""
    With activations of order 1, alpha * sum a^2 ~ 1e-4 is negligible next to k = 2, so
    LRN is nearly a constant factor 2^-0.75, which the next convolution's weights absorb.
    (AlexNet fed pixel values up to 255, where the sum matters.) The paper found no gain
    from LRN (its Table 3: A 29.6 %, A-LRN 29.7 % top-1 error) and dropped it from B-E.
""")
fig, ax = plt.subplots(figsize=(5.5, 3))
ax.hist(scale, bins=50)
ax.axvline(2 ** -0.75, color="tab:red", ls="--", label=f"2^-0.75 = {2 ** -0.75:.4f}")
ax.set_xlabel("LRN output / input, per active unit")
ax.set_ylabel("number of units")
ax.xaxis.set_major_locator(MaxNLocator(nbins=4))      # few ticks: the values are long
ax.ticklabel_format(axis="x", useOffset=False)
ax.set_title("LRN on this network's first-layer activations")
ax.legend()
save(fig, OUT, FIGURES[0])
model_a = build("A")
losses_a, top1_a, step_a = train(model_a, "A")
losses_lrn, top1_lrn, step_lrn = train(a_lrn, "A-LRN")
_, top1_a1, _ = train(build("A", seed=1), "A, seed 1")
seed_gap, lrn_gap = abs(top1_a1 - top1_a), abs(top1_lrn - top1_a)
print(f"   A-LRN took {100 * (step_lrn / step_a - 1):+.0f}% time per step (separate runs: "
      "machine noise included); its test accuracy "
      f"differs from A's by {top1_lrn - top1_a:+.1f} points,\n   while A with another seed "
      f"differs by {top1_a1 - top1_a:+.1f}: "
      + ("the LRN difference is within the seed noise" if lrn_gap <= seed_gap else
         "the LRN difference exceeds this one seed's, but one run each proves nothing"))

# %% Initialising D from a trained A
section("Initialising D from a trained A")
say("""
    The paper trained A from random weights, then started the deeper networks with A's
    first four convolutions and its fully connected layers, the rest random (Sect. 3.1).
    init_from copies them by their Caffe names (conv1_1, conv2_1, conv3_1, conv3_2):
""")
d_random, d_from_a = build("D"), build("D")
pairs = init_from(d_from_a, model_a)
for dst, src in pairs:
    print(f"   D.{dst:22s} <- A.{src}")
same = all(np.array_equal(dict(d_from_a.named_parameters())[f"{dst}.weight"].data,
                          dict(model_a.named_parameters())[f"{src}.weight"].data)
           for dst, src in pairs)
print(f"   copied weights identical: {same}; D's other "
      f"{sum(1 for _, m in d_from_a.named_layers() if isinstance(m, Conv2D)) - 4} "
      "convolutions keep their random start")
losses_dr, top1_dr, _ = train(d_random, "D, random", epochs_d)
losses_da, top1_da, _ = train(d_from_a, "D, from A", epochs_d)
fig, ax = plt.subplots(figsize=(6, 3.4))
for losses, label in ((losses_a, "A (random start)"), (losses_dr, "D, random start"),
                      (losses_da, "D, initialised from A")):
    ax.plot(losses, label=label)
ax.axhline(np.log(10), color="gray", ls=":", label="ln(10)")
ax.set_xlabel("step (same batches for every network)")
ax.set_ylabel("training loss")
ax.set_title(f"D from A: test top-1 {top1_da:.1f}% vs {top1_dr:.1f}% from random")
ax.legend(fontsize=8)
save(fig, OUT, FIGURES[1])
say("""
    With He initialisation (which the paper did not have) D also trains from scratch;
    the paper's authors noted the same later: Glorot initialisation made pre-training
    unnecessary. The figure shows how much head start A's layers give in this setting.
""")

# %% Dense evaluation: the classifier as convolutions
section("Dense evaluation: the classifier as convolutions")
CHECKPOINT = OUT.parent / "14_training" / "run" / "best.npz"
if CHECKPOINT.is_file():                       # lesson 14's network was trained for longer
    ckpt = read_checkpoint(CHECKPOINT)
    model_a = model_from_checkpoint(ckpt)
    normalize = Normalize(**ckpt.facts.normalize)
    print(f"   using lesson 14's VGG-A ({CHECKPOINT})")
dense = to_dense_eval(model_a)
print("   to_dense_eval(A): the Dense head becomes a convolution; the network now takes any "
      "size:")
x32 = normalize(ds.test_images[:8]).astype(np.float32)
diff = np.abs(mv.asnumpy(dense.forward(x32, False)) - mv.asnumpy(model_a.forward(x32, False)))
print(f"   on 32 x 32 test images it gives the same logits: max |difference| {diff.max():.1e}")
picks = [int(np.flatnonzero(ds.test_labels == k)[0]) for k in (0, 3, 7, 8)]
quads = ds.test_images[picks]
mosaic = np.concatenate([np.concatenate([quads[0], quads[1]], axis=2),
                         np.concatenate([quads[2], quads[3]], axis=2)], axis=1)[None]
xm = normalize(mosaic).astype(np.float32)
score_map = mv.asnumpy(to_dense_eval(model_a, average=False).forward(xm, False))[0]
averaged = mv.asnumpy(dense.forward(xm, False))[0]
alone = mv.asnumpy(model_a.forward(normalize(quads).astype(np.float32), False))
print(f"   a 64 x 64 mosaic of four test images -> class-score map {score_map.shape} "
      "(one score vector per 32-pixel step)")
for cell, (r, c) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
    print(f"     cell ({r},{c}): true {ds.classes[ds.test_labels[picks[cell]]]:10s} map says "
          f"{ds.classes[score_map[:, r, c].argmax()]:10s} the quadrant alone says "
          f"{ds.classes[alone[cell].argmax()]}")
print(f"   averaged over the map (the paper's sum-pooling): "
      f"{ds.classes[averaged.argmax()]!r}")
cells = [score_map[:, r, c].argmax() for r, c in ((0, 0), (0, 1), (1, 0), (1, 1))]
agree = sum(int(a == b) for a, b in zip(cells, alone.argmax(axis=1)))
print(f"   the map agrees with the quadrants seen alone in {agree} of 4 cells")
field, jump = 1, 1                       # lesson 09's rule, over this network's layers
for _, layer in model_a["features"].named_layers():
    if isinstance(layer, (Conv2D, MaxPool2D)):
        field, jump = field + (layer.kernel_size - 1) * jump, jump * layer.stride
say(f"""
    A map cell is not its quadrant alone: its receptive field (lesson 09's rule: {field}
    pixels for A) spans the whole mosaic, so the neighbours leak in where a lone 32 x 32
    image had zero padding -- context this network never saw in training. The paper
    trained on crops of larger rescaled images, so its network had seen such context.
    And the cost, next to evaluating crops one by one?
""")
macs_dense = dense.summary((3, 64, 64), print_fn=None).macs
macs_crop = model_a.summary((3, 32, 32), print_fn=None).macs
positions = score_map.shape[1] * score_map.shape[2]
print(f"   dense evaluation of the 64 x 64 image: {macs_dense / 1e6:.1f} M MACs for a "
      f"{score_map.shape[1]} x {score_map.shape[2]} map, one position every 32 pixels")
print(f"   the {positions} crops of 32 x 32 at those positions (stride 32, not overlapping): "
      f"{positions} x {macs_crop / 1e6:.1f} = {positions * macs_crop / 1e6:.1f} M MACs, "
      f"{positions * macs_crop / macs_dense:.2f} x dense")
say("""
    No saving: with a 32 x 32 network the crops at the map's stride of 32 do not overlap,
    so there is nothing to share. Dense evaluation pays when the crops overlap -- when
    the network's input is larger than its total stride, as in the paper: 224 x 224
    crops, stride 32. Counting the multiply-accumulates of configuration A (the same sum
    over layers that summary() does, checked here on the 32 x 32 network first):
""")


def vgg_macs(config, size, width=1.0, head=(4096, 4096, 1000), crop=224):
    """MACs of a VGG on a size x size image, the FC head as convolutions (dense)."""
    c, side, total = 3, size, 0
    for item in config:
        if item == "M":
            side //= 2
        elif item != "LRN":
            out, k = item if isinstance(item, tuple) else (item, 3)
            out = max(1, int(round(out * width)))
            total += c * out * k * k * side * side      # C_in * C_out * k*k per output pixel
            c = out
    window = crop // 32                                 # the first FC sees window x window
    grid = side - window + 1                            # positions in the score map
    features = c * window * window
    for units in head:
        total += features * units * grid * grid
        features = units
    return total, grid


st = model_a.settings
small_macs, _ = vgg_macs(st.layers, 32, width=st.width, head=(*st.hidden, st.num_classes),
                         crop=32)
print(f"   the sum for this VGG-A (width {st.width}) at 32 x 32: {small_macs / 1e6:.1f} M MACs; "
      f"summary() said {macs_crop / 1e6:.1f} M")
one_crop, _ = vgg_macs(VGG_CONFIGS["A"], 224)
whole, grid = vgg_macs(VGG_CONFIGS["A"], 384)
print(f"   the paper's A on a 384 x 384 image, densely: {whole / 1e9:.1f} G MACs for a "
      f"{grid} x {grid} map")
print(f"   {grid * grid} crops of 224 x 224 at the same positions (stride 32, overlapping by "
      f"192 pixels): {grid * grid} x {one_crop / 1e9:.2f} = {grid * grid * one_crop / 1e9:.0f} "
      f"G MACs, {grid * grid * one_crop / whole:.1f} x dense")
fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
axes[0].imshow(mosaic[0].transpose(1, 2, 0))
for r, c in ((0, 0), (0, 1), (1, 0), (1, 1)):
    axes[0].text(32 * c + 16, 32 * r + 29, ds.classes[score_map[:, r, c].argmax()],
                 ha="center", color="yellow", fontsize=8, fontweight="bold")
axes[0].set_title("mosaic and the map's class per cell")
axes[0].axis("off")
probs = np.exp(averaged - averaged.max())
axes[1].barh(ds.classes, probs / probs.sum())
axes[1].set_title("averaged class scores (softmax)")
save(fig, OUT, FIGURES[2])
report_test_accuracy(results["A"], ds.test_labels, "of A (the first network trained here)")
done()
