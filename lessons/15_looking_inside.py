"""Lesson 15 -- looking inside a trained VGG: filters, feature maps, confusions, mistakes.

    python lessons/15_looking_inside.py

Uses lesson 14's checkpoint (<out>/14_training/run/best.npz) when it exists; otherwise
trains a small network briefly first, with the same recipe.
"""

# %%
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
from minivgg.checkpoint import read_checkpoint
from minivgg.data import DataLoader, Normalize
from minivgg.plots import (
    block_outputs,
    confusion_matrix,
    first_conv_weight,
    plot_confusion,
    plot_feature_maps,
)
from minivgg.run import DEFAULTS, build_run, make_model, model_from_checkpoint, saved_config
from minivgg.train import Trainer, evaluate

FIGURES = ["filters.png", "feature_maps.png", "confusion.png", "mistakes.png"]
OUT = out_dir("15_looking_inside")
CHECKPOINT = OUT.parent / "14_training" / "run" / "best.npz"

title("Lesson 15: what the network learned")
mv.set_backend("numba")   # on the CPU, like every lesson (lesson 11 compares backends)
ds = take(load_images(), *((384, 256) if FAST else (2048, 1017)))
if CHECKPOINT.is_file():
    ckpt = read_checkpoint(CHECKPOINT)
    model, config = model_from_checkpoint(ckpt), saved_config(ckpt.facts.config)
    normalize = Normalize(**ckpt.facts.normalize)
    print(f"   loaded lesson 14's network from {CHECKPOINT} (after epoch "
          f"{ckpt.progress.epoch})")
else:
    print(f"   no checkpoint at {CHECKPOINT} (run lesson 14 first to reuse it); training a "
          "small network briefly instead:")
    epochs = 2 if FAST else epochs_for(ds, 3, 8)
    config = {**DEFAULTS, "dataset": ds.name, "width": 0.25, "batch_norm": True,
              "epochs": epochs, "batch_size": 64, "lr": 0.05, "seed": 0, "backend": "numba"}
    if ds.name == "shapes" and not FAST:
        config["lr"] = 0.02               # as lesson 14 does on the shapes set
    run = build_run(config, dataset=ds)
    model, normalize = run.model, run.normalize
    Trainer.for_run(run, OUT / "run", progress=False, log=lambda line: print("   " + line)).fit()
n_test = len(ds.test_images)
test_images, test_labels = ds.test_images[:n_test], ds.test_labels[:n_test]
loader = DataLoader(test_images, test_labels, batch_size=256, shuffle=False,
                    transform=normalize)
result = evaluate(model, loader, predictions=True)
report_test_accuracy(int((result["predicted"] == result["labels"]).sum()), test_labels)
print(f"   top-5: {result['top5']:.1f}% (the true class among the five highest scores)")

# %% First-layer filters
section("First-layer filters")
weight = first_conv_weight(model)
untrained = first_conv_weight(make_model(config, ds.num_classes, 3))  # the run's seed
change = np.linalg.norm(weight - untrained) / np.linalg.norm(untrained)
print(f"   {weight.shape[0]} filters of shape {weight.shape[1:]}; training moved them by "
      f"{change:.0%} of their initial size (same seed, so the same starting point)")


def roughness(w):
    """Mean squared difference of neighbouring weights, relative to the weights' variance."""
    dx = np.diff(w, axis=3) ** 2
    dy = np.diff(w, axis=2) ** 2
    return float((dx.mean() + dy.mean()) / 2 / w.var())


def colour_contrast(w):
    """How much a filter's three colour planes differ (0: a grey filter)."""
    return float(np.mean(w.std(axis=1)) / np.mean(np.abs(w)))


print(f"   roughness (neighbour differences / variance; 2.0 for independent noise): "
      f"initial {roughness(untrained):.2f}, trained {roughness(weight):.2f}")
print(f"   colour contrast between a filter's R, G, B planes: initial "
      f"{colour_contrast(untrained):.2f}, trained {colour_contrast(weight):.2f}")
verdict = ("did become smoother" if roughness(weight) < 0.9 * roughness(untrained)
           else "are not yet measurably smoother than noise")
say(f"""
    Long runs on large data sets turn first-layer filters into smooth edge, blob and
    colour-opponent detectors (Krizhevsky et al. 2012, Fig. 3, shows 96 of them). Here the
    numbers say the filters {verdict} after this run.
    Each filter is drawn as a tiny RGB picture (mid-grey = 0), its initial and trained
    versions on ONE scale, +-(the largest |weight| of the pair), so what moved shows:
""")
shown = min(len(weight), 16)
fig, axes = plt.subplots(2, shown, figsize=(shown * 0.75, 2.1), squeeze=False)
for i in range(shown):
    bound = max(np.abs(weight[i]).max(), np.abs(untrained[i]).max())
    for row, w in enumerate((untrained[i], weight[i])):
        axes[row, i].imshow(np.clip(0.5 + 0.5 * w.transpose(1, 2, 0) / bound, 0, 1),
                            interpolation="nearest")
        axes[row, i].set_xticks([])
        axes[row, i].set_yticks([])
    axes[1, i].set_xlabel(str(i), fontsize=7)
axes[0, 0].set_ylabel("initial", fontsize=8)
axes[1, 0].set_ylabel("trained", fontsize=8)
fig.suptitle(f"first-layer filters {shown} of {len(weight)} ({weight.shape[1]} x "
             f"{weight.shape[2]} x {weight.shape[3]}), numbered; training moved them by "
             f"{change:.0%}", fontsize=9)
save(fig, OUT, FIGURES[0])

# %% Feature maps, block by block
section("Feature maps, block by block")
idx = int(np.flatnonzero(result["predicted"] == result["labels"])[0]) \
    if (result["predicted"] == result["labels"]).any() else 0
x = normalize(test_images[idx:idx + 1]).astype(np.float32)
print(f"   test image {idx}, a {ds.classes[test_labels[idx]]!r} "
      f"(predicted {ds.classes[result['predicted'][idx]]!r})")
for name, maps in block_outputs(model, mv.to_device(x)):
    active = (maps > 0).mean()
    print(f"   after {name}: {maps.shape[0]} maps of {maps.shape[1]} x {maps.shape[2]}; "
          f"{active:.0%} of the units active (> 0)")
say("""
    Each block halves the resolution and (up to 512 * width) doubles the channels: the
    maps trade *where* for *what*, from edges at 16 x 16 to class evidence at 1 x 1.
""")
plot_feature_maps(model, test_images[idx], mv.to_device(x), OUT / FIGURES[1])
print(f"   [figure] {OUT / FIGURES[1]}")

# %% The confusion matrix
section("The confusion matrix")
counts = confusion_matrix(result["labels"], result["predicted"], ds.num_classes)
per_class = counts.diagonal() / np.maximum(counts.sum(axis=1), 1)
order = np.argsort(per_class)
print("   accuracy per class: " + ", ".join(f"{ds.classes[k]} {per_class[k]:.0%}"
                                             for k in order[::-1]))
off = counts.copy()
np.fill_diagonal(off, 0)
pairs = np.dstack(np.unravel_index(np.argsort(off, axis=None)[::-1][:3], off.shape))[0]
for t, p in pairs:
    print(f"   {off[t, p]:3d} {ds.classes[t]!r} images taken for {ds.classes[p]!r}")
plot_confusion(result["labels"], result["predicted"], ds.classes, OUT / FIGURES[2])
print(f"   [figure] {OUT / FIGURES[2]}")

# %% The most confident mistakes
section("The most confident mistakes")
model.eval()
with mv.no_grad():
    logits = mv.asnumpy(model.forward(mv.to_device(normalize(test_images).astype(np.float32))))
probs = np.exp(logits - logits.max(axis=1, keepdims=True))
probs /= probs.sum(axis=1, keepdims=True)
predicted = probs.argmax(axis=1)
wrong = np.flatnonzero(predicted != test_labels)
worst = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:12 if FAST else 18]
print(f"   {len(wrong)} of {n_test} test images are misclassified; the most confident "
      f"mistake has p = {probs[worst[0], predicted[worst[0]]]:.0%}" if len(worst) else
      "   no mistakes")
cols = 6
rows = max(1, -(-len(worst) // cols))
fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9), squeeze=False)
for ax in axes.ravel():
    ax.axis("off")
for ax, k in zip(axes.ravel(), worst):
    ax.imshow(test_images[k].transpose(1, 2, 0))
    ax.set_title(f"{ds.classes[predicted[k]]} {probs[k, predicted[k]]:.0%}\n"
                 f"(really {ds.classes[test_labels[k]]})", fontsize=7, color="tab:red")
fig.suptitle("confident mistakes: predicted class and probability (true class)", fontsize=9)
save(fig, OUT, FIGURES[3])
done()
