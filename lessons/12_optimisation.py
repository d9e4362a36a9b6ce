"""Lesson 12 -- optimisation and the training loop: SGD, momentum, weight decay, learning-rate
schedules, and crop-and-flip augmentation, each written out and then measured.

    python lessons/12_optimisation.py
"""

# %%
import math
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

import minivgg as mv
from minivgg import schedules
from minivgg.data import Compose, HorizontalFlip, Normalize, RandomCrop
from minivgg.layers import BatchNorm2D
from minivgg.losses import SoftmaxCrossEntropy
from minivgg.models import vgg
from minivgg.optim import SGD
from minivgg.train import train_step

FIGURES = ["loop_and_momentum.png", "schedules.png", "augmented_pictures.png",
           "augmentation_effect.png"]
OUT = out_dir("12_optimisation")
mv.set_cpu_kernels("numba")     # compiled kernels: these runs take ~50 steps each (lesson 11)

title("Lesson 12: the training loop, and what each part of the optimiser does")
ds = take(load_images(), *((512, 256) if FAST else (2048, 1017)))
normalize = Normalize.from_data(ds.train_images)   # statistics of the training images only
WIDTH, BATCH = 0.125, 64


def fresh_model(seed=0):
    """VGG-A at width 1/8 with batch norm (lesson 13): small enough for seconds per run."""
    return vgg("A", num_classes=ds.num_classes, input_size=32, head="cifar", width=WIDTH,
               batch_norm=True, seed=seed)


# %% The loop, written out
section("The loop, written out")
say("""
    Training is four steps repeated over mini-batches: forward, loss, backward, update.
    Here it is in plain code, the whole of it; minivgg's Trainer (lesson 14) runs the same
    loop and adds validation, checkpoints and resuming.
""")


def train_plain(model, opt, images, labels, epochs, augment=None, schedule=None, seed=0):
    """Mini-batch SGD over (images, labels); returns the loss of every step."""
    rng = np.random.default_rng(seed)
    loss_fn = SoftmaxCrossEntropy()
    steps_per_epoch = len(images) // BATCH             # the last partial batch is dropped
    losses = []
    for epoch in range(epochs):
        order = rng.permutation(len(images))            # a new order every epoch
        model.train()                                   # batch statistics, dropout on
        for i in range(steps_per_epoch):
            idx = order[i * BATCH:(i + 1) * BATCH]
            x = images[idx]
            if augment is not None:
                x = augment(x, rng)                     # random crops and flips (below)
            x = normalize(x)
            if schedule is not None:                    # t = epochs done, fractional
                opt.lr = schedule.lr(epoch + i / steps_per_epoch)
            logits = model.forward(x)                   # 1. forward (in training mode)
            loss = loss_fn.forward(logits, labels[idx])  # 2. loss (a number)
            model.backward(loss_fn.backward())          # 3. backward: fills every .grad
            opt.step()                                  # 4. update every parameter
            losses.append(loss)
    return losses


def count_correct(model, images, labels):
    """How many images the model classifies correctly: evaluation mode, no caches."""
    model.eval()                                        # running statistics, dropout off
    correct = 0
    with mv.no_grad():
        for start in range(0, len(images), 256):
            logits = model(normalize(images[start:start + 256]))
            correct += int((logits.argmax(axis=1) == labels[start:start + 256]).sum())
    model.train()
    return correct


def mean_loss(model, images, labels):
    """The mean cross-entropy over (images, labels) in evaluation mode."""
    model.eval()
    loss_fn, total = SoftmaxCrossEntropy(), 0.0
    with mv.no_grad():
        for start in range(0, len(images), 256):
            logits = model(normalize(images[start:start + 256]))
            total += loss_fn.forward(logits, labels[start:start + 256]) * len(logits)
    model.train()
    return total / len(images)


model = fresh_model()
opt = SGD(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
t0 = time.perf_counter()
losses = train_plain(model, opt, ds.train_images, ds.train_labels, epochs=1)
seconds = time.perf_counter() - t0
print(f"   one epoch: {len(losses)} steps of {BATCH} images in {seconds:.1f} s; loss "
      f"{losses[0]:.3f} -> {np.mean(losses[-5:]):.3f} (mean of the last 5); ln(10) = "
      f"{math.log(10):.3f}")
report_test_accuracy(count_correct(model, ds.test_images, ds.test_labels), ds.test_labels,
                     "after one epoch")
twin_a, twin_b = fresh_model(), fresh_model()          # the same seed: identical weights
opt_a, opt_b = SGD(twin_a, lr=0.05), SGD(twin_b, lr=0.05)
xb, yb = normalize(ds.train_images[:BATCH]), ds.train_labels[:BATCH]
loss_fn = SoftmaxCrossEntropy()
twin_a.train()
loss_fn.forward(twin_a.forward(xb), yb)
twin_a.backward(loss_fn.backward())
opt_a.step()
train_step(twin_b, opt_b, xb, yb)                       # the package's one step
same = max(float(np.abs(p.data - q.data).max())
           for p, q in zip(twin_a.parameters(), twin_b.parameters()))
print(f"   minivgg.train.train_step does exactly steps 1-4: weights after one step differ "
      f"by {same:.1e}")

# %% SGD and momentum
section("SGD and momentum, by hand and measured")
say("""
    Plain SGD moves each weight against its gradient: w <- w - lr * g. Momentum keeps a
    running sum of past gradients, v <- mu * v + g, and moves along it: w <- w - lr * v.
    Where the gradients agree from step to step, v grows towards g / (1 - mu): with
    mu = 0.9 the step becomes 10 x larger. Where they flip sign (noise), they cancel.
    Weight decay adds wd * w to g (next section). minivgg.optim.SGD against these lines:
""")
w_model = fresh_model()
opt = SGD(w_model, lr=0.05, momentum=0.9, weight_decay=5e-4)
conv = w_model["features"][0]
rng = np.random.default_rng(1)
w, v = conv.weight.data.copy(), np.zeros_like(conv.weight.data)
for step in range(3):
    g = rng.standard_normal(w.shape).astype(np.float32)
    for p in w_model.parameters():
        p.grad[...] = 0
    conv.weight.grad[...] = g
    opt.step()
    v = 0.9 * v + (g + 5e-4 * w)                       # by hand: decay, momentum, step
    w = w - 0.05 * v
    print(f"   step {step + 1}: max |by hand - SGD.step()| = "
          f"{np.abs(w - conv.weight.data).max():.1e}")

n_epochs = 1 if FAST else 2
recipes = [("SGD, lr 0.05", 0.05, 0.0), ("momentum 0.9, lr 0.005", 0.005, 0.9),
           ("momentum 0.9, lr 0.05", 0.05, 0.9)]
curves, results = {}, {}
for label, lr, mu in recipes:
    model = fresh_model()
    opt = SGD(model, lr=lr, momentum=mu, weight_decay=5e-4)
    curves[label] = train_plain(model, opt, ds.train_images, ds.train_labels, n_epochs)
    results[label] = count_correct(model, ds.test_images, ds.test_labels)
    print(f"   {label:22s}: loss {curves[label][0]:.3f} -> {np.mean(curves[label][-5:]):.3f}, "
          f"test accuracy {results[label] / len(ds.test_labels):.1%}")
say(f"""
    Same batches, same start ({n_epochs} epoch(s) of {len(ds.train_images)} images). lr
    0.005 with momentum 0.9 takes steps of about 0.005 / (1 - 0.9) = 0.05 once v has
    built up, so it should track plain SGD at 0.05; momentum at lr 0.05 steps ~10 x
    further. What this run measured is in the lines above.
""")
fig, ax = plt.subplots(figsize=(6.5, 3.6))
for label, losses in curves.items():
    smooth = np.convolve(losses, np.ones(5) / 5, mode="valid") if len(losses) > 5 else losses
    ax.plot(smooth, label=f"{label} (test {results[label] / len(ds.test_labels):.0%})")
ax.axhline(math.log(10), color="gray", ls=":", label="ln(10)")
ax.set_xlabel("step (the same batches for every run)")
ax.set_ylabel("training loss (mean of 5 steps)")
ax.set_title(f"VGG-A width {WIDTH}, batch norm, batch {BATCH}")
ax.legend(fontsize=8)
save(fig, OUT, FIGURES[0])

# %% Weight decay
section("Weight decay is L2, and not for every parameter")
say("""
    Adding (wd / 2) * ||w||^2 to the loss adds wd * w to the gradient: each step shrinks w
    by the factor (1 - lr * wd) besides following the data. Checked by finite differences
    on a few numbers:
""")
w8 = np.random.default_rng(2).standard_normal(5)
wd, h = 5e-4, 1e-6
numeric = [(wd / 2 * ((w8 + h * e) ** 2).sum() - wd / 2 * ((w8 - h * e) ** 2).sum()) / (2 * h)
           for e in np.eye(5)]
print(f"   d/dw of (wd/2)||w||^2 by centred differences: {np.round(numeric, 8)}")
print(f"   wd * w:                                        {np.round(wd * w8, 8)}")
decay = {"decayed": 0, "exempt": 0}
kinds = {}
for name, p in fresh_model().named_parameters().items():
    decay["decayed" if p.decay else "exempt"] += p.data.size
    kind = name.rsplit(".", 1)[-1]
    kinds.setdefault((kind, p.decay), 0)
    kinds[kind, p.decay] += 1
print("   Parameter.decay in this network: "
      + ", ".join(f"{n} x {k} {'decayed' if d else 'exempt'}" for (k, d), n in kinds.items()))
n_bn = sum(isinstance(layer, BatchNorm2D) for _, layer in fresh_model().named_layers())
print(f"   {decay['decayed']:,} numbers decayed, {decay['exempt']:,} exempt (the biases, and "
      f"gamma and beta of the {n_bn} batch norms)")
steps_30 = 30 * math.ceil(50_000 / 128)
print(f"   a gamma with no gradient at all, decayed for a 30-epoch CIFAR run "
      f"({steps_30:,} steps at lr 0.05): (1 - 0.05 * 5e-4)^{steps_30:,} = "
      f"{(1 - 0.05 * 5e-4) ** steps_30:.2f} of its size")
say("""
    Why exempt biases and batch norm's gamma and beta (Parameter.decay is False for them,
    and SGD skips them unless decay_all=True)? Decay is meant to keep the *weights* that
    multiply inputs small, which limits how sharply the network can react. A bias or beta
    shifts a channel, a gamma sets its scale after normalisation: pulling those to 0 does
    not make the function smoother, it only fights the data -- the line above shows how
    far it would drag a gamma on its own. There are few of them, too: the exempt count.
""")

# %% Learning-rate schedules
section("Learning-rate schedules")
say("""
    A schedule gives the learning rate as a function of t, the epochs done so far (the
    loop above sets opt.lr = schedule.lr(t) before each step). Large steps early explore,
    small steps late settle into a minimum. The paper divided lr by 10 whenever the
    validation accuracy stopped improving (3 times in 74 epochs); minivgg's default for
    CIFAR is a cosine.
""")
epochs, per_epoch = 30, 100
ts = np.arange(epochs * per_epoch) / per_epoch
shown = {
    "Constant": schedules.Constant(0.05),
    "Step(10, 0.1)": schedules.Step(0.05, step=10, gamma=0.1),
    "MultiStep([15, 22])": schedules.MultiStep(0.05, [15, 22], gamma=0.1),
    "Cosine(30)": schedules.Cosine(0.05, epochs),
    "Warmup(Cosine, 2 epochs)": schedules.Warmup(schedules.Cosine(0.05, epochs), 2, per_epoch),
}
plateau = schedules.Plateau(0.05, factor=0.1, patience=2)
val_acc = np.concatenate([np.linspace(30, 60, 10), [60.0] * 5,       # a made-up run: rises,
                          np.linspace(61, 66, 5), [66.0] * 6,       # stalls, rises, stalls,
                          np.linspace(66.5, 67, 4)])                # creeps up
plateau_lr = []
for e in range(epochs):
    plateau_lr += [plateau.lr(e)] * per_epoch
    plateau.end_epoch(val_acc[e])
fig, axes = plt.subplots(1, 2, figsize=(13, 3.6))
for label, sched in shown.items():
    style = {"ls": ":", "lw": 2.5} if label.startswith("Warmup") else {}   # cosine beneath
    axes[0].plot(ts, [sched.lr(t) for t in ts], label=label, **style)
axes[0].plot(ts, plateau_lr, "k--", label="Plateau (accuracies on the right)")
axes[0].set_xlabel("epoch")
axes[0].set_ylabel("learning rate")
axes[0].set_title("minivgg.schedules, base lr 0.05")
axes[0].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))   # off the curves
fig.subplots_adjust(wspace=0.95)
axes[1].plot(range(epochs), val_acc, "k.-")
axes[1].set_xlabel("epoch")
axes[1].set_ylabel("validation accuracy (%)")
axes[1].set_title(f"a made-up run for Plateau: {plateau.reductions} reductions")
save(fig, OUT, FIGURES[1])
for label, sched in shown.items():
    print(f"   {label:26s} lr at epochs 0, 10, 20, 29: "
          + ", ".join(f"{sched.lr(t):.2g}" for t in (0, 10, 20, 29)))
print(f"   Plateau(factor 0.1, patience 2), fed the accuracies on the right: "
      f"{plateau.reductions} reductions, ending at lr {plateau.lr(epochs):.2g}")

# %% Augmentation
section("Crop-and-flip augmentation")
augment = Compose([RandomCrop(32, padding=4), HorizontalFlip()])
say("""
    A network that sees the same 32 x 32 pictures every epoch can memorise them. Random
    crops (pad 4 pixels with zeros, cut a random 32 x 32 window: shifts of up to 4
    pixels) and left-right flips make every epoch's pictures slightly different, while
    the class stays the same. The test images are never augmented.
""")
rng = np.random.default_rng(0)
shown_imgs = ds.train_images[:6]
fig, axes = plt.subplots(4, 6, figsize=(9, 6.4))
for col, img in enumerate(shown_imgs):
    axes[0, col].imshow(img.transpose(1, 2, 0))
    axes[0, col].set_title(ds.classes[ds.train_labels[col]], fontsize=8)
for row in range(1, 4):
    batch = augment(shown_imgs, rng)
    for col in range(6):
        axes[row, col].imshow(batch[col].transpose(1, 2, 0))
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_ylabel("original", fontsize=8)
for row in range(1, 4):
    axes[row, 0].set_ylabel(f"augmented #{row}", fontsize=8)
fig.suptitle("RandomCrop(32, padding=4) + HorizontalFlip(), three draws")
save(fig, OUT, FIGURES[2])

n_aug, aug_epochs = (256, 2) if FAST else (1024, 8)
if ds.name == "shapes" and not FAST:
    n_aug = len(ds.train_images)             # all of them, and more epochs (next line)
aug_epochs = epochs_for(ds, aug_epochs, aug_epochs if FAST else 6)
images, labels = ds.train_images[:n_aug], ds.train_labels[:n_aug]
say(f"""
    Measured: {n_aug} training images, {aug_epochs} epochs, with and without augmentation
    (momentum 0.9, lr 0.05, weight decay 5e-4, cosine schedule), the same start.
""")
scores, corrects = {}, {}
for label, aug in (("without augmentation", None), ("with crops and flips", augment)):
    model = fresh_model()
    opt = SGD(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
    train_plain(model, opt, images, labels, aug_epochs, augment=aug,
                schedule=schedules.Cosine(0.05, aug_epochs))
    train_acc = count_correct(model, images, labels) / n_aug
    test_correct = count_correct(model, ds.test_images, ds.test_labels)
    test_loss = mean_loss(model, ds.test_images, ds.test_labels)
    scores[label] = (train_acc, test_correct / len(ds.test_labels), test_loss)
    corrects[label] = test_correct
    print(f"   {label:22s}: training images {train_acc:.1%} right, test images "
          f"{scores[label][1]:.1%} right (gap {train_acc - scores[label][1]:+.1%}); test loss "
          f"{test_loss:.3f}")
(tr0, te0, loss0), (tr1, te1, loss1) = scores.values()
print(f"   augmentation changed: the train-test gap {100 * (tr0 - te0):.1f} -> "
      f"{100 * (tr1 - te1):.1f} points, the test accuracy {100 * te0:.1f} -> {100 * te1:.1f} %, "
      f"the test loss {loss0:.3f} -> {loss1:.3f}")
if te1 > te0:
    outcome = "here the test accuracy rose as well"
else:
    outcome = (f"here the test accuracy fell: in {aug_epochs} epochs the augmented network "
               f"has not yet fitted even its training pictures ({tr1:.0%} right)")
say(f"""
    Without augmentation the network {'memorised' if tr0 > 0.9 else 'fitted'} its
    {n_aug} pictures ({tr0:.0%} right) far better than unseen ones; with crops and flips
    it cannot memorise them, so the gap shrinks. The harder task also takes longer to
    learn: {outcome}. Augmentation pays in long runs, once a network without it has
    memorised its training set and stops improving on new pictures -- the regime of
    `minivgg train` on all 50,000 images for tens of epochs, not of a short lesson.
""")
fig, ax = plt.subplots(figsize=(5.5, 3.4))
pos = np.arange(2)
ax.bar(pos - 0.2, [100 * v[0] for v in scores.values()], 0.4, label="training images")
ax.bar(pos + 0.2, [100 * v[1] for v in scores.values()], 0.4, label="test images")
ax.set_xticks(pos, list(scores))
ax.set_ylabel("accuracy (%)")
ax.set_ylim(0, 100)
ax.set_title(f"{n_aug} images, {aug_epochs} epochs")
ax.legend()
save(fig, OUT, FIGURES[3])
better = max(corrects, key=corrects.get)
report_test_accuracy(corrects[better], ds.test_labels, f"of the better of the two, {better}")
done()
