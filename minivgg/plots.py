"""Figures of a training run, saved as PNG files in the run folder (matplotlib, Agg).

    curves.png         loss and top-1 accuracy per epoch: train, validation (if any), test
    confusion.png      which classes are taken for which (rows: true, columns: predicted)
    predictions.png    test images with the predicted and the true label (red when wrong)
    filters.png        the first convolution's 3x3 filters, as small colour pictures
    feature_maps.png   one test image after each block of the network
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure  # without pyplot: no backend, no global state
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import MaxNLocator

from minivgg.backend import asnumpy, to_device
from minivgg.files import atomic_write_bytes
from minivgg.layers import Conv2D, MaxPool2D
from minivgg.modes import no_grad

# Every figure is laid out by hand, in inches (the margins of curves and confusion from the
# measured sizes of their texts), and so drawn once: bbox_inches="tight" would draw it a
# second time to find where to crop.
DPI = 110                     # pixels per inch of every PNG
PAD = 0.1                     # white margin around what is drawn
TICK = 7 / 72                 # a tick mark (3.5 points) and the gap to its label (3.5 points)
LABEL_GAP, TITLE_GAP = 4 / 72, 6 / 72    # matplotlib's axes.labelpad and axes.titlepad
_MEASURE = RendererAgg(1, 1, DPI)        # draws nothing: measures texts as the PNG has them


@functools.cache
def _text_size(text: str, size="medium") -> tuple[float, float]:
    """Width and height in inches of ``text`` in one line at font ``size`` (points, or a
    name such as "large"), measured as matplotlib lays it out (a line at least as tall as
    "lp": an ascender and a descender); measured once per text and size."""
    font = FontProperties(size=size)
    w, h, _ = _MEASURE.get_text_width_height_descent(text, font, ismath=False)
    _, line, _ = _MEASURE.get_text_width_height_descent("lp", font, ismath=False)
    return w / DPI, max(h, line) / DPI


def _line(size="medium") -> float:
    """The height in inches of a line of text at font ``size``."""
    return _text_size("", size)[1]


def _save(fig, path) -> Path:
    """Render the PNG in memory, then write it via a temporary file and a rename, like every
    other file of a run (zlib level 3: lossless, half the time of the default 6, a file about
    10% larger)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": 3})
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _as_picture(img: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) or (H, W) for imshow, scaled to [0, 1]."""
    img = np.asarray(img, dtype=np.float32)
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def mosaic(pictures, cols: int, gap: int = 2, below: int = 0) -> np.ndarray:
    """Pictures (each (h, w, 3) or (h, w) in [0, 1], all one size) in a grid of ``cols``
    columns, ``gap`` white pixels apart and ``below`` more white pixels under each row (room
    for labels): one (H, W, 4) opaque RGBA image, drawn with a single imshow (a figure of
    one picture renders several times faster than one axes per picture, and matplotlib
    draws an RGBA picture faster than an RGB one)."""
    h, w = pictures[0].shape[:2]
    rows, step_y, step_x = -(-len(pictures) // cols), h + gap + below, w + gap
    out = np.ones((rows * step_y - gap, cols * step_x - gap, 4), dtype=np.float32)
    for k, picture in enumerate(pictures):
        r, c = divmod(k, cols)
        rgb = picture if picture.ndim == 3 else picture[:, :, None]
        out[r * step_y:r * step_y + h, c * step_x:c * step_x + w, :3] = rgb
    return out


LABELS = {"train": "train", "val": "validation", "test": "test"}


def _widest_tick_label(axis) -> float:
    """The width in inches of the widest tick label that ``axis`` will draw, from its
    locator and formatter as they are now (the data plotted, the axes its final height)."""
    lo, hi = sorted(axis.get_view_interval())
    ticks = [t for t in axis.get_major_locator()() if lo <= t <= hi]
    labels = axis.get_major_formatter().format_ticks(ticks)
    return max((_text_size(label)[0] for label in labels), default=0.0)


def plot_curves(history: list[dict], path) -> Path:
    """Loss and top-1 accuracy against the epoch (ticks at whole epochs): train, validation
    (if any) and test."""
    epochs = [row["epoch"] for row in history]
    width, height = 8.7, 3.9                         # inches, the figure
    bottom = PAD + _line() + LABEL_GAP + _line() + TICK      # "epoch", the tick labels
    top = PAD + _line("large") + TITLE_GAP
    y, h = bottom / height, 1 - (bottom + top) / height    # of both plots, as fractions
    fig = Figure(figsize=(width, height), dpi=DPI)
    ax_loss, ax_acc = axes = [fig.add_axes((0, y, 0.5, h)) for _ in range(2)]  # x: below
    for split, style in (("train", "-o"), ("val", "-^"), ("test", "-s")):
        if f"{split}_top1" not in history[0]:
            continue
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "top1")):
            ax.plot(epochs, [r[f"{split}_{metric}"] for r in history], style,
                    label=LABELS[split], ms=3)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator("auto", integer=True, min_n_ticks=1))  # epochs
        ax.grid(alpha=0.3)
        ax.legend()
    # Sideways, now that the y tick labels are known. Left of each plot: its y label and tick
    # labels; right of each: half the last epoch's label (it overhangs); 0.2 inches between.
    lefts = [_line() + LABEL_GAP + _widest_tick_label(ax.yaxis) + TICK for ax in axes]
    right = _text_size(str(max(epochs)))[0] / 2
    plot = (width - 2 * PAD - sum(lefts) - 2 * right - 0.2) / 2
    x_acc = PAD + lefts[0] + plot + right + 0.2 + lefts[1]
    ax_loss.set_position(((PAD + lefts[0]) / width, y, plot / width, h))
    ax_acc.set_position((x_acc / width, y, plot / width, h))
    return _save(fig, path)


def confusion_matrix(labels, predicted, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predicted)), 1)
    return counts


def plot_confusion(labels, predicted, classes, path) -> Path:
    """Rows: the true class, columns: the predicted one, each cell shaded by its share of the
    row (the colour bar); up to 20 classes the cells show their counts, up to 30 the axes
    the class names."""
    k = len(classes)
    counts = confusion_matrix(labels, predicted, k)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    names = [str(c) for c in classes] if k <= 30 else []
    side = min(max(3.5, 0.38 * k), 21)              # the matrix, inches
    bar = min(side / 20, 0.3)                       # the colour bar's width
    # The margins, from the sizes of the texts around the matrix. The class names below it
    # are turned 60 degrees and end at their column's middle; the same names beside it
    # reach further left than any of them.
    w, h = np.array([_text_size(n) for n in names]).reshape(-1, 2).T
    turned = w * np.sin(np.pi / 3) + h * np.cos(np.pi / 3)          # their height
    left = PAD + _line() + LABEL_GAP + w.max(initial=0) + TICK      # "true", the names
    bottom = PAD + _line() + LABEL_GAP + turned.max(initial=0) + TICK
    top = PAD + _line("large") + TITLE_GAP
    # right of it: a gap as wide as the colour bar, the bar, its tick labels and its label
    right = 2 * bar + TICK + _text_size("0.0")[0] + LABEL_GAP + _line() + PAD
    width, height = left + side + right, bottom + side + top
    fig = Figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((left / width, bottom / height, side / width, side / height))
    cax = fig.add_axes(((left + side + bar) / width, bottom / height, bar / width,
                        side / height))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, cax=cax, label="share of the true class")
    ticks = np.arange(k)
    ax.set_xticks(ticks, names, rotation=60, ha="right")
    ax.set_yticks(ticks, names)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    accuracy = 100.0 * np.trace(counts) / max(counts.sum(), 1)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix (top-1 {accuracy:.1f}%)")
    return _save(fig, path)


def plot_predictions(images, labels, predicted, classes, path, n: int = 18) -> Path:
    """The first ``n`` test images, each labelled "predicted (true)" (red when wrong)."""
    n = min(n, len(images))
    cols = min(6, n)
    pictures = [_as_picture(images[i]) for i in range(n)]
    h, w = pictures[0].shape[:2]
    gap, below = max(2, w // 10), h * 9 // 20             # two lines of text under each
    grid = mosaic(pictures, cols, gap, below)
    width = cols * 1.4                                     # inches; the height follows
    fig = Figure(figsize=(width, width * grid.shape[0] / grid.shape[1] + 0.4), dpi=DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1 - 0.4 / fig.get_figheight()))
    ax.imshow(grid, interpolation="nearest")
    ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        right = predicted[i] == labels[i]
        ax.text(c * (w + gap) + w / 2, r * (h + gap + below) + h + 1,
                f"{classes[predicted[i]]}\n({classes[labels[i]]})", ha="center", va="top",
                fontsize=7, color="black" if right else "red")
    fig.suptitle("predicted (true)", fontsize=9)
    return _save(fig, path)


def first_conv_weight(model) -> np.ndarray:
    for _, layer in model.named_layers():
        if isinstance(layer, Conv2D):
            return asnumpy(layer.weight.data)
    raise ValueError("plot_filters: the model has no Conv2D layer")


def plot_filters(weight: np.ndarray, path) -> Path:
    """Each filter (C, kh, kw) of the first layer as a small picture, scaled on its own."""
    f = weight.shape[0]
    cols = min(f, 16)
    rows = -(-f // cols)
    fig = Figure(figsize=(cols * 0.6, rows * 0.6 + 0.4), dpi=DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, rows * 0.6 / (rows * 0.6 + 0.4)))
    ax.imshow(mosaic([_as_picture(w) for w in weight], cols, gap=1), interpolation="nearest")
    ax.axis("off")
    fig.suptitle(f"first-layer filters ({f} x {weight.shape[1]} x {weight.shape[2]} x "
                 f"{weight.shape[3]})", fontsize=9)
    return _save(fig, path)


def block_outputs(model, x) -> list[tuple[str, np.ndarray]]:
    """The activations after each max-pooling of ``model.features`` (one per block), in
    evaluation mode (the model's mode is restored afterwards)."""
    outs, h, was_training = [], x, model.training
    features = model["features"] if "features" in getattr(model, "names", []) else model
    model.eval()
    try:
        with no_grad():
            for layer in features:
                h = layer.forward(h, training=False)
                if isinstance(layer, MaxPool2D):
                    outs.append((f"block {len(outs) + 1}", asnumpy(h[0])))
    finally:
        model.train(was_training)
    return outs


def _picture_only(ax, title: str) -> None:
    """No axis lines or ticks around a picture, and a small title just above it (at a fixed
    height: a title that places itself measures the hidden tick labels first)."""
    ax.set_axis_off()
    ax.set_title(title, fontsize=7, y=1.0)


def tile(maps: np.ndarray, gap: int = 1) -> np.ndarray:
    """(K, h, w) maps side by side, ``gap`` blank (NaN) pixels apart, values unchanged: one
    colour scale for the whole row, so the maps can be compared with each other."""
    k, h, w = maps.shape
    out = np.full((h, k * (w + gap) - gap), np.nan, dtype=np.float32)
    for i, m in enumerate(maps):
        out[:, i * (w + gap):i * (w + gap) + w] = m
    return out


def plot_feature_maps(model, image: np.ndarray, x, path, per_block: int = 8) -> Path:
    """``image`` (C, H, W) for display, ``x`` (1, C, H, W) the network's input.

    The input once, at the top left; then one row per block: its ``per_block`` most active
    channels after the max-pooling, strongest first, on one colour scale per row (the bar
    beside the row). A block whose maps are single pixels (the last one at 32×32) has no
    picture to show: its row is a bar chart of those channels' values, strongest first.
    """
    outs = block_outputs(model, x)
    fig = Figure(figsize=(11, 1.5 * len(outs)), dpi=DPI)
    grid = fig.add_gridspec(len(outs), 2, width_ratios=[1, per_block], left=0.02, right=0.97,
                            bottom=0.08, top=1 - 0.5 / fig.get_figheight(), hspace=0.45,
                            wspace=0.05)
    side = fig.add_subplot(grid[0, 0])
    side.imshow(_as_picture(image), cmap="gray", interpolation="nearest")
    _picture_only(side, "input")
    for row, (name, maps) in enumerate(outs):
        ax = fig.add_subplot(grid[row, 1], label="maps")
        means = maps.reshape(len(maps), -1).mean(axis=1)
        strongest = np.argsort(-means, kind="stable")[:per_block]
        title = f"{name}: {maps.shape[0]} maps of {maps.shape[1]}x{maps.shape[2]}; "
        if maps.shape[1:] == (1, 1):
            ax.bar(np.arange(len(strongest)), means[strongest], color="tab:green")
            ax.set_xticks(np.arange(len(strongest)), [str(c) for c in strongest], fontsize=6)
            ax.set_xlabel("channel (strongest first)", fontsize=7)
            ax.set_ylabel("activation", fontsize=7)
            ax.tick_params(axis="y", labelsize=6)
            ax.set_title(title + "the strongest channels' values", fontsize=7)
        else:
            im = ax.imshow(tile(maps[strongest]), cmap="viridis", interpolation="nearest")
            _picture_only(ax, title + "channels " + ", ".join(str(c) for c in strongest)
                          + " (strongest first)")
            cbar = fig.colorbar(im, ax=ax, fraction=0.015, pad=0.01)
            cbar.ax.tick_params(labelsize=6)
    fig.suptitle("feature maps after each block (the most active channels)", fontsize=9)
    return _save(fig, path)


def run_plots(run_dir, run, history, test_result=None) -> list[Path]:
    """All five figures of a finished run (``run`` from minivgg.run.build_run, its model as
    it is at the end of training), drawn from the test set.

    ``test_result``: the evaluation of this model on the test set with predictions
    (minivgg.scoring.evaluate), when the caller has it; else it is computed here.
    """
    from minivgg.run import test_transform
    from minivgg.scoring import evaluate
    run_dir, ds = Path(run_dir), run.dataset
    result = test_result or evaluate(run.model, run.test_loader, predictions=True)
    x = test_transform(run.config, run.normalize)(ds.test_images[:1], None).astype(np.float32)
    return [plot_curves(history, run_dir / "curves.png"),
            plot_confusion(result["labels"], result["predicted"], run.classes,
                           run_dir / "confusion.png"),
            plot_predictions(ds.test_images, result["labels"], result["predicted"],
                             run.classes, run_dir / "predictions.png"),
            plot_filters(first_conv_weight(run.model), run_dir / "filters.png"),
            plot_feature_maps(run.model, ds.test_images[0], to_device(x, run.device),
                              run_dir / "feature_maps.png")]
