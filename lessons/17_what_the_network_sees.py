"""Lesson 17 -- what the network sees: saliency, Grad-CAM, an adversarial example, and
VGG-16 on a photograph.

    python lessons/17_what_the_network_sees.py

Trains a small VGG for a few seconds, then asks it, with nothing but the backward passes of
the earlier lessons, which pixels its decision depends on. With torchvision's VGG-16 weights
on this machine (`minivgg predict --weights vgg16 photo.jpg` downloads them once) the last
section explains VGG-16's own answer for a photograph; without them, the small network's.
"""

# %%
import copy

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

import minivgg as mv
from minivgg import explain as ex
from minivgg import imagenet
from minivgg import plots_explain as pe
from minivgg.data import Normalize
from minivgg.models import VGGSettings, vgg
from minivgg.optim import SGD
from minivgg.plots import first_conv_weight, plot_filters
from minivgg.summary import summarize
from minivgg.train import train_step
from minivgg.weights.hub import WEIGHTS, weights_dir

FIGURES = ["saliency.png", "gradcam_blocks.png", "adversarial.png", "score_map.png",
           "photo.png", "filters.png", "vgg16_diagram.png"]
OUT = out_dir("17_what_the_network_sees")

title("Lesson 17: what the network sees")
mv.set_backend("numba")   # on the CPU, like every lesson (lesson 11 compares backends)
say("""
    Every explanation here is one forward and one backward pass: the same passes that
    trained the network, with a different gradient sent back from the top.
""")

# %% A small network to look at
section("A small network to look at")
ds = take(load_images(), *((512, 256) if FAST else (5120, 1000)))
epochs = 1 if FAST else epochs_for(ds, 3, 8)
lr = 0.02 if ds.name == "shapes" and not FAST else 0.05
if lr != 0.05:
    print("   (shapes fallback: lr 0.02 and 8 epochs -- at 0.05 for 3 epochs this network "
          "ended at 1.5 x chance there)")
normalize = Normalize.from_data(ds.train_images)
x_train, y_train = normalize(ds.train_images), ds.train_labels
x_test, y_test, classes = normalize(ds.test_images), ds.test_labels, ds.classes
model = vgg("A", 10, 32, head="cifar", width=1 / 8, batch_norm=True, seed=0)
optimizer = SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
order = np.random.default_rng(0)
for epoch in range(epochs):
    for i in np.array_split(order.permutation(len(x_train)), len(x_train) // 64):
        loss, _ = train_step(model, optimizer, x_train[i], y_train[i])
    print(f"   epoch {epoch + 1}/{epochs}: last batch loss {loss:.3f}")
model.eval()


def logits_of(x):
    with mv.no_grad():
        return model.forward(x, training=False)


def probabilities(x):
    return imagenet.softmax(logits_of(x))            # lesson 07's stable softmax


predicted = logits_of(x_test).argmax(axis=1)
report_test_accuracy(int((predicted == y_test).sum()), y_test, "of VGG-A, width 1/8")
right = np.flatnonzero(predicted == y_test)
print(f"   {len(right)} test images are classified correctly; we explain those")
if len(right) < 6:                                   # a network that has barely trained
    right = np.arange(len(y_test))
    print("   (too few to choose from: the first test images are explained instead)")

# %% The gradient of one class score
section("The gradient of one class score")
say("""
    Backward usually starts from the loss. Start it instead from the upstream gradient
    e_k = (0, .., 1, .., 0) on the logits z: the chain rule then gives
        sum_j (e_k)_j dz_j/dx = dz_k/dx,
    the derivative of class k's score (before the softmax) with respect to every input
    value. No new code: model.forward, then model.backward(one_hot).
""")
j = right[0]
x, k = x_test[j:j + 1], int(y_test[j])
z = model.forward(x, training=False)                 # evaluation mode, caches kept
one_hot = np.zeros_like(z)
one_hot[0, k] = 1
by_hand = model.backward(one_hot)
g = ex.class_score_gradient(model, x, k)
print(f"   test image {j}, a {classes[k]!r}: by hand vs explain.class_score_gradient, "
      f"max difference {np.abs(by_hand - g).max():.1e}")
m64 = copy.deepcopy(model).astype(np.float64)         # finite differences want float64
x64, h, (c0, r0, q0) = x.astype(np.float64), 1e-5, (0, 16, 16)
bump = np.zeros_like(x64)
bump[0, c0, r0, q0] = h
with mv.no_grad():
    numeric = (m64.forward(x64 + bump, training=False)[0, k]
               - m64.forward(x64 - bump, training=False)[0, k]) / (2 * h)
print(f"   d score / d x[{c0}, {r0}, {q0}]: backward {g[0, c0, r0, q0]:+.6f}, centred "
      f"difference {numeric:+.6f} (float64)")
step = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32) * 0.01
change = float(logits_of(x + step)[0, k] - z[0, k])
print(f"   a random step of size 0.01 per value changes the score by {change:+.4f}; the "
      f"gradient predicts g . step = {float((g * step).sum()):+.4f} (the score is nearly "
      "linear near x)")

# %% Saliency maps (Simonyan et al. 2014) and SmoothGrad (Smilkov et al. 2017)
section("Saliency maps (Simonyan et al. 2014) and SmoothGrad (Smilkov et al. 2017)")
say("""
    Near x the score is ~ g . x + b, so |g| says how strongly each pixel moves it. The
    VGG authors' own paper (Sect. 3.1) keeps, per pixel, the largest |g| of its three
    colours. The raw gradient is noisy (each ReLU and max-pool switches on or off);
    SmoothGrad averages the gradient over copies of x with noise of 15 % of its range.
""")
shown = right[:6]
n_noise = 8 if FAST else 25
maps = [(ex.saliency(model, x_test[i:i + 1], y_test[i]),
         ex.smoothgrad(model, x_test[i:i + 1], y_test[i], n=n_noise)) for i in shown]
centre = np.zeros((32, 32), bool)
centre[8:24, 8:24] = True                            # the middle quarter of the picture


def centre_share(m):
    return float(m[centre].sum() / m.sum())


for name, which in (("saliency", 0), ("SmoothGrad", 1)):
    share = np.mean([centre_share(pair[which]) for pair in maps])
    print(f"   {name}: {share:.0%} of the map's mass lies in the middle quarter of the "
          "picture (25 % if it were spread evenly)")


def picture(i):
    """Test image i as the 0..1 RGB picture a person sees."""
    return ds.test_images[i].transpose(1, 2, 0) / 255.0


fig, axes = plt.subplots(3, len(shown), figsize=(2.0 * len(shown), 6.4), squeeze=False)
for col, (i, (sal, smooth)) in enumerate(zip(shown, maps)):
    axes[0, col].imshow(picture(i))
    axes[0, col].set_title(classes[y_test[i]], fontsize=9)
    for row, m in ((1, sal), (2, smooth)):
        im = axes[row, col].imshow(m / m.max(), cmap="inferno", vmin=0, vmax=1)
for row, label in enumerate(("image", "saliency\nmax_c |d score / d x|",
                             f"SmoothGrad\n({n_noise} noisy copies)")):
    axes[row, 0].set_ylabel(label, fontsize=8)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
fig.colorbar(im, ax=axes[1:].ravel().tolist(), fraction=0.02, label="|gradient| (largest = 1)")
fig.suptitle("which pixels move the score of the true class", fontsize=10)
save(fig, OUT, FIGURES[0])

# %% Grad-CAM (Selvaraju et al. 2017), block by block
section("Grad-CAM (Selvaraju et al. 2017), block by block")
say("""
    Grad-CAM stops the backward pass at a block's output A (C maps of h x w) and weighs
    each map by how much the score depends on it, on average:
        alpha_c = mean_ij d score_k / d A[c, i, j],   map = ReLU(sum_c alpha_c A[c]).
    Deep blocks are coarse but know about classes; shallow ones see edges.
""")
i = right[0]
blocks = ex.conv_blocks(model)
cams = [ex.gradcam(model, x_test[i:i + 1], y_test[i], layer=b + 1) for b in range(len(blocks))]
top2 = np.argsort(-probabilities(x_test[i:i + 1])[0])[:2]
other = int(top2[1] if top2[0] == y_test[i] else top2[0])
cam_other = ex.gradcam(model, x_test[i:i + 1], other, layer=4)
shapes = {row.name: row.output_shape for row in summarize(model, (3, 32, 32)).rows}
for b, (path, cam) in enumerate(zip(blocks, cams)):
    c, hh, ww = shapes[path]
    print(f"   block {b + 1} ({path}): A is {c} maps of {hh} x {ww}; "
          f"{centre_share(cam):.0%} of the map in the middle quarter")
corr = np.corrcoef(cams[3].ravel(), cam_other.ravel())[0, 1]
print(f"   block 4, true class {classes[y_test[i]]!r} vs runner-up {classes[other]!r}: "
      f"the two maps correlate {corr:+.2f} (1 would mean Grad-CAM ignores the class)")
fig, axes = plt.subplots(1, len(cams) + 2, figsize=(2.1 * (len(cams) + 2), 2.6))
axes[0].imshow(picture(i))
axes[0].set_title(f"{classes[y_test[i]]}", fontsize=9)
for ax, cam, title_ in zip(axes[1:], cams + [cam_other],
                           [f"block {b + 1}" for b in range(len(cams))]
                           + [f"block 4, class\n{classes[other]}"]):
    ax.imshow(picture(i))
    im = ax.imshow(cam / cam.max() if cam.max() > 0 else cam, cmap="jet", alpha=0.5,
                   vmin=0, vmax=1)
    ax.set_title(title_, fontsize=9)
for ax in axes:
    ax.axis("off")
fig.colorbar(im, ax=axes.tolist(), fraction=0.015, label="Grad-CAM (largest = 1)")
save(fig, OUT, FIGURES[1])

# %% An adversarial example (Goodfellow et al. 2015)
section("An adversarial example (Goodfellow et al. 2015)")
say("""
    The gradient of the loss with respect to the image says which way each value should
    move to make the answer worse. The fast gradient sign method moves every value by the
    same tiny eps in that direction:  x_adv = x + eps * sign(d loss / d x).
    One step; no value changes by more than eps. Noise of the same size, with random
    signs, is the control.
""")
std = normalize.std[:, None, None]
lo, hi = normalize(np.zeros((1, 3, 1, 1), np.uint8)), normalize(np.full((1, 3, 1, 1), 255,
                                                                        np.uint8))
xs, ys = x_test[right], y_test[right]
signs = np.sign(np.random.default_rng(2).standard_normal(xs.shape)).astype(np.float32)
flips = {}
for eps in (0.01, 0.02, 0.05, 0.1):
    adv = ex.fgsm(model, xs, ys, eps, clip=(lo, hi))
    flips[eps] = logits_of(adv).argmax(axis=1) != ys
    noise = logits_of(np.clip(xs + eps * signs, lo, hi)).argmax(axis=1) != ys
    levels = eps * float(std.mean())
    print(f"   eps {eps:.2f} (~{levels:.1f} of 255 grey levels): FGSM changes the answer for "
          f"{flips[eps].mean():.0%} of the {len(ys)} images, random signs for {noise.mean():.0%}")
# show, at eps 0.02 (or the smallest eps that fools any), the most confident image fooled
eps = next((e for e in (0.02, 0.05, 0.1) if flips[e].any()), 0.1)
confidence = probabilities(xs).max(axis=1)
a = int(np.argmax(np.where(flips[eps], confidence, -1))) if flips[eps].any() else 0
x0 = xs[a:a + 1]
adv = ex.fgsm(model, x0, ys[a:a + 1], eps, clip=(lo, hi))
p0, p1 = probabilities(x0)[0], probabilities(adv)[0]
print(f"   test image {right[a]}: {classes[p0.argmax()]!r} at {p0.max():.0%} becomes "
      f"{classes[p1.argmax()]!r} at {p1.max():.0%} (eps {eps}); largest change of a value "
      f"{np.abs(adv - x0).max():.3f}")


def to_picture(x):
    """A normalised (1, 3, 32, 32) input back to a 0..1 RGB picture."""
    return np.clip((x[0] * std + normalize.mean[:, None, None]) / 255, 0, 1).transpose(1, 2, 0)


fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.2))
delta = (adv - x0)[0].transpose(1, 2, 0)
axes[0].imshow(to_picture(x0))
axes[0].set_title(f"original: {classes[p0.argmax()]} {p0.max():.0%}", fontsize=9)
axes[1].imshow(0.5 + 0.5 * delta / max(np.abs(delta).max(), 1e-12))
axes[1].set_title(f"eps * sign(gradient), eps = {eps} (~{eps * float(std.mean()):.1f} grey "
                  "levels)\nshown stretched to full contrast", fontsize=9)
axes[2].imshow(to_picture(adv))
axes[2].set_title(f"adversarial: {classes[p1.argmax()]} {p1.max():.0%}", fontsize=9,
                  color="tab:red" if p1.argmax() != p0.argmax() else "black")
for ax in axes:
    ax.axis("off")
fig.suptitle("one fast-gradient-sign step", fontsize=10)
save(fig, OUT, FIGURES[2])

# %% Dense evaluation: a map of class scores (the paper's Sect. 3.2)
section("Dense evaluation: a map of class scores (the paper's Sect. 3.2)")
say("""
    Lesson 14 turned the classifier into convolutions to score an image larger than the
    training crops. Before the average, the network gives a map: one score vector per
    32-pixel step. Four test pictures side by side, 64 x 64, give a 2 x 2 map.
""")
first_of = {}
for i in right:                                      # one picture per class, where possible
    first_of.setdefault(int(y_test[i]), int(i))
tiles = (list(first_of.values()) + list(right))[:4]
mosaic = np.block([[ds.test_images[tiles[0]], ds.test_images[tiles[1]]],
                   [ds.test_images[tiles[2]], ds.test_images[tiles[3]]]])     # (3, 64, 64)
scores = ex.class_score_map(model, normalize(mosaic[None]))
where = scores.argmax(axis=0)
hits = sum(int(where[r, q] == y_test[tiles[2 * r + q]]) for r in range(2) for q in range(2))
reach, jump = 1, 1                                   # receptive field, as in lesson 09
for _, layer in model["features"].named_layers():
    if hasattr(layer, "kernel_size"):
        reach, jump = reach + (layer.kernel_size - 1) * jump, jump * layer.stride
print(f"   score map {scores.shape}: each tile alone is classified right; in the mosaic the "
      f"best class at a position is its tile's class at {hits} of 4 positions -- a position "
      f"does not see its tile alone: a unit after the last block sees {reach} x {reach} "
      "pixels (lesson 09), more than the whole mosaic")
pe.plot_score_map(scores, mosaic.transpose(1, 2, 0), classes, OUT / FIGURES[3],
               "dense evaluation of four test pictures")
print(f"   [figure] {OUT / FIGURES[3]}")

# %% VGG-16 on a photograph
section("VGG-16 on a photograph")


def sample_photo():
    """matplotlib's bundled photograph of Grace Hopper: no download needed."""
    from matplotlib import cbook
    return cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


photo = sample_photo()


def as_seen(size):
    """The photo as a network of input ``size`` sees it (torchvision's way: the shorter side
    resized to size * 8/7, 256 for 224, then the central square): uint8 (size, size, 3)."""
    resized = imagenet.resize_shorter(imagenet.load_image(photo), size * 8 // 7)
    return np.asarray(imagenet.center_crop(resized, size))


weights = pe.cached_weights("vgg16")
if weights is not None:
    print(f"   torchvision's VGG-16 weights found at {weights}")
    big = pe.pretrained_vgg(weights).eval()
    top = pe.predict_photo(big, photo)
    print("   top-5: " + ", ".join(f"{name} {p:.1%}" for _, name, p in top))
    x_photo = imagenet.preprocess(photo)
    result = pe.explain_file(big, x_photo, as_seen(224), imagenet.class_names(), "gradcam",
                             None, None, OUT / FIGURES[4])
    print(f"   Grad-CAM of {result['name']!r} at {result['layer']} (relu5_3, 14 x 14) "
          f"[figure] {result['path']}")
    plot_filters(first_conv_weight(big), OUT / FIGURES[5])
    say("""
        VGG-16's 64 first-layer filters, each scaled on its own: after ImageNet they are
        smooth edge, bar and colour detectors, unlike the small network's after seconds.
    """)
else:
    print(f"   no VGG-16 weights here: `minivgg predict --weights vgg16 photo.jpg` downloads "
          f"them once (528 MB), or put {WEIGHTS['vgg16']} at {weights_dir()}; meanwhile the "
          "small network looks at the photo (which shows none of its classes)")
    seen = as_seen(32)
    x_photo = normalize(seen.transpose(2, 0, 1)[None])
    result = pe.explain_file(model, x_photo, seen, classes, "gradcam", 4, None,   # block 4:
                             OUT / FIGURES[4])                               # 4 x 4 maps
    print("   top-5: " + ", ".join(f"{name} {p:.1%}" for _, name, p in result["top"]) +
          f"; Grad-CAM of {result['name']!r} at {result['layer']} [figure] {result['path']}")
    plot_filters(first_conv_weight(model), OUT / FIGURES[5])
print(f"   [figure] {OUT / FIGURES[5]}")
pe.plot_model(VGGSettings("vgg16", 1000, 224, "imagenet"), None, OUT / FIGURES[6])
print(f"   VGG-16's blocks, drawn from the shapes alone (no weights needed) "
      f"[figure] {OUT / FIGURES[6]}")
done()
