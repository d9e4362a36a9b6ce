"""Lesson 14 -- training a small VGG: sanity checks first, then a short run with curves.

    python lessons/14_training.py

Saves the run (config.json, metrics.csv, last.npz, best.npz) in <out>/14_training/run/,
which lessons 15 and 16 reuse; `minivgg eval <that folder>` evaluates it too.
"""

# %%
import math
import time

from _common import (
    FAST,
    chance,
    cifar_folder,
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
from minivgg.files import write_json
from minivgg.gradcheck import compute_gradients, relative_error
from minivgg.layers import Conv2D
from minivgg.losses import SoftmaxCrossEntropy
from minivgg.models import vgg
from minivgg.plots import plot_curves
from minivgg.run import DEFAULTS, build_run, make_optimizer
from minivgg.train import Trainer, evaluate, train_step

FIGURES = ["overfit_one_batch.png", "curves.png"]
OUT = out_dir("14_training")
RUN = OUT / "run"

title("Lesson 14: training a small VGG")
backend = mv.set_backend("numba")   # on the CPU; on a GPU: minivgg train --backend cupy
n_train, n_test, epochs = (384, 256, 2) if FAST else (4096, 1017, 4)
ds = take(load_images(), n_train, n_test)
n_train = len(ds.train_images)                 # what there really is (the shapes set: fewer)
epochs = epochs if FAST else epochs_for(ds, epochs, 8)
data_dir = cifar_folder() if ds.name == "cifar10" else None
config = {**DEFAULTS, "dataset": ds.name, "data_dir": data_dir and str(data_dir),
          "model": "A", "width": 0.25, "batch_norm": True, "epochs": epochs, "batch_size": 64,
          "lr": 0.05, "schedule": "cosine", "augment": "crop+flip", "seed": 0, "backend": backend}
if ds.name == "shapes" and not FAST:
    config["lr"] = 0.02
    print("   (lr 0.02 on the shapes set: at 0.05 this network's first epochs there blow up)")
print(f"   {ds!r}; backend {backend!r}")
print(f"   VGG-{config['model']}, width {config['width']}, batch norm, SGD momentum 0.9, lr "
      f"{config['lr']} cosine, weight decay {config['weight_decay']}, batch "
      f"{config['batch_size']}, {epochs} epochs, random crops and flips")

# %% Sanity check 1: the gradients of this very architecture
section("Sanity check 1: the gradients of this very architecture")
loss_fn = SoftmaxCrossEntropy()
tiny = vgg(config["model"], num_classes=10, input_size=32, head="cifar", width=1 / 32,
           batch_norm=True, seed=0, dtype=np.float64)
xs = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
labels = np.array([3, 7])
grads = compute_gradients(tiny, xs, lambda y: (loss_fn.forward(y, labels), loss_fn.backward()),
                          max_entries=3 if FAST else 6)
conv_biases = {f"{path}.bias" for path, layer in tiny.named_layers() if isinstance(layer, Conv2D)}
errs = {k: relative_error(a, b) for k, (_, a, b) in grads.items() if k not in conv_biases}
print(f"   compute_gradients on a float64 copy at width 1/32: worst relative error "
      f"{max(errs.values()):.1e} over {len(errs)} tensors (tolerance 1e-6)")
biggest = max(max(np.abs(a).max(), np.abs(b).max())
              for k, (_, a, b) in grads.items() if k in conv_biases)
print(f"   the {len(conv_biases)} conv biases are the exception: batch norm subtracts the batch "
      f"mean right after them,\n   so their gradient is exactly zero; analytic and numeric "
      f"are both below {biggest:.0e} (rounding)")
assert max(errs.values()) < 1e-6 and biggest < 1e-8

# %% Sanity check 2: the first loss
section("Sanity check 2: the first loss")
run = build_run(config, dataset=ds)    # data, normalisation, model, loaders, optimizer
model, normalize = run.model, run.normalize
x0 = normalize(ds.train_images[:256], None).astype(np.float32)
model.eval()
with mv.no_grad():
    first = loss_fn.forward(model.forward(x0), ds.train_labels[:256])
print(f"   untrained: loss {first:.4f} on 256 images; ln(10) = {math.log(10):.4f} "
      f"(lesson 07: near-uniform guesses)")

# %% Sanity check 3: overfit one batch
section("Sanity check 3: overfit one batch")
n_batch = 16 if FAST else 32
overfit = {"lr": 0.02, "weight_decay": 0.0}
lr_note = f" instead of {config['lr']}" if config["lr"] != overfit["lr"] else ""
say(f"""
    A network that cannot memorise {n_batch} pictures cannot learn 50,000. Trained on one
    fixed batch, without augmentation, its loss must fall to ~0 and its accuracy reach 100 %.
    Two settings differ from the run's, on purpose: weight decay off (it pulls every weight
    towards zero, i.e. it works against memorising -- here we test whether the network
    CAN fit, not how well it generalises), and lr {overfit['lr']}{lr_note} (the same batch
    gives nearly the same gradient every step, so momentum piles it up to ~10 x the step;
    a small lr keeps that from overshooting).
""")
xb = normalize(ds.train_images[:n_batch], None).astype(np.float32)
yb = ds.train_labels[:n_batch]
opt = make_optimizer({**config, **overfit}, model)
history = []
for _ in range(150):
    loss, correct = train_step(model, opt, xb, yb)   # forward, loss, backward, update
    history.append((loss, correct / n_batch))        # (measured before the update)
    if correct == n_batch and loss < 0.05:
        break
print(f"   {n_batch} images: loss {history[0][0]:.3f} -> {history[-1][0]:.4f}, accuracy "
      f"{history[0][1]:.0%} -> {history[-1][1]:.0%} in {len(history)} steps")
assert history[-1][1] == 1.0, "the network could not overfit one batch: something is broken"
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.semilogy([h[0] for h in history], label="loss")
ax2 = ax.twinx()
ax2.plot([100 * h[1] for h in history], color="tab:orange", label="accuracy (%)")
ax.set_xlabel("step (the same batch every time)")
ax.set_ylabel("loss (log)")
ax2.set_ylabel("batch accuracy (%)")
ax.set_title(f"overfitting one batch of {n_batch} images")
save(fig, OUT, FIGURES[0])

# %% A short run
section("A short run")
run = build_run(config, dataset=ds)                    # a fresh network, the same recipe
model, train_loader, test_loader = run.model, run.train_loader, run.test_loader
print(f"   {len(run.val_loader.images)} of the {n_train} training images are held out to "
      "select best.npz (validation); the test images are only reported")
RUN.mkdir(parents=True, exist_ok=True)
write_json(RUN / "config.json", config)
trainer = Trainer.for_run(run, RUN, progress=False, log=lambda line: print("   " + line))
t0 = time.perf_counter()
result = trainer.fit()
seconds = time.perf_counter() - t0
final = evaluate(model, test_loader)
print(f"   {epochs} epochs of {len(train_loader)} batches in {seconds:.1f} s "
      f"({epochs * len(train_loader) * config['batch_size'] / seconds:.0f} training images/s)")
report_test_accuracy(round(final["top1"] * final["n"] / 100), ds.test_labels[:final["n"]],
                     "of the last epoch")
plot_curves(result["history"], OUT / FIGURES[1])
print(f"   [figure] {OUT / FIGURES[1]}")
print(f"   run folder: {RUN} ({', '.join(sorted(p.name for p in RUN.iterdir()))})")
base = 100 * chance(ds.test_labels)
if final["top1"] > base + 5:
    verdict = f"test accuracy is {final['top1'] / base:.1f} x chance"
else:
    verdict = ("this run is too short to beat chance clearly" +
               (" (fast mode: run without MINIVGG_LESSON_FAST)" if FAST else ""))
say(f"""
    {epochs} epochs on {n_train} pictures is far from the paper's 74 epochs on 1.3 million,
    but the checks say the machinery is right: the first loss is ln(10), one batch is
    memorised, and {verdict}. For a real run, all 50,000 CIFAR-10 images and 30 epochs:
    `minivgg train --model A --width 0.25 --epochs 30` (its figures land in the run folder).
""")
done()
