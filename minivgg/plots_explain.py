"""Figures of what a network sees (minivgg.explain) and of its architecture.

    plot_explanation   the image, the image under its heat map (with a colour bar), and the
                       top classes with their probabilities
    plot_score_map     dense evaluation: where in a large image each top class scores
    plot_model         a diagram of a VGG's blocks: output shape, parameters, MACs per block
                       (from the shapes alone, as Keras' plot_model; no forward pass)

and what the commands call: ``explain_file`` (minivgg explain), ``pretrained_vgg`` and
``predict_photo`` (minivgg predict --weights vgg16), ``plot_model`` (summary --plot).

Every figure is saved atomically (a temporary file in the same folder, then os.replace), so
a reader never sees half a PNG.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt  # the backend is left to the user (Agg when headless)
import numpy as np
from matplotlib.patches import FancyBboxPatch

from minivgg.backend import asnumpy


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG to ``path`` via a temporary file and a rename; close it."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _picture(image) -> np.ndarray:
    """uint8 (H, W, 3) / (H, W) or (C, H, W) -> something imshow shows as the photo."""
    img = asnumpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[2] not in (1, 3):
        img = img.transpose(1, 2, 0)                    # CHW -> HWC
    return img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img


def _scaled(heat) -> np.ndarray:
    """A map scaled to [0, 1] by its maximum (saliency and Grad-CAM are >= 0)."""
    heat = asnumpy(heat).astype(np.float64)
    top = np.abs(heat).max()
    return heat / top if top > 0 else heat


def _top_bars(ax, top) -> None:
    """Horizontal bars of the top classes' probabilities, best on top."""
    names = [f"{name} ({i})" for i, name, _ in top]
    probs = [100 * p for _, _, p in top]
    y = np.arange(len(top))[::-1]
    ax.barh(y, probs, color=["tab:red"] + ["tab:blue"] * (len(top) - 1))
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("probability (%)")
    ax.set_title(f"top {len(top)} classes")
    for yy, p in zip(y, probs):
        ax.text(min(p + 2, 80), yy, f"{p:.1f}%", va="center", fontsize=8)


def plot_explanation(image, heat, top, path, title: str = "", method: str = "") -> Path:
    """The image, the image under ``heat`` (H', W') with a colour bar, and the top classes.

    ``image``: the picture the network saw, uint8 (H, W, 3) (or (C, H, W)); ``heat`` is
    stretched over it. ``top``: [(index, name, probability), ...] (minivgg.imagenet.top_k),
    best first; the explained class is named in the title.
    """
    pic, h = _picture(image), _scaled(heat)
    extent = (0, pic.shape[1], pic.shape[0], 0)
    fig, (ax_img, ax_heat, ax_top) = plt.subplots(
        1, 3, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1.2, 1]}, layout="constrained")
    ax_img.imshow(pic, cmap="gray", extent=extent)
    ax_img.set_title("input")
    ax_heat.imshow(pic, cmap="gray", extent=extent)
    shown = ax_heat.imshow(h, cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=extent,
                           interpolation="bilinear")
    fig.colorbar(shown, ax=ax_heat, fraction=0.046, pad=0.04,
                 label="importance (largest = 1)")
    ax_heat.set_title(f"{method} overlay" if method else "overlay")
    for ax in (ax_img, ax_heat):
        ax.axis("off")
    _top_bars(ax_top, top)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _softmax(scores: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(scores - scores.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def plot_score_map(score_map, image, classes, path, title: str = "", k: int = 3) -> Path:
    """Dense evaluation: the image, then the per-position probability of the ``k`` classes
    with the highest mean score (the paper's sum-pooled score), each with a colour bar.

    ``score_map`` (classes, H', W') from minivgg.explain.class_score_map; ``image`` the
    large picture it was computed on; ``classes`` the class names.
    """
    scores = asnumpy(score_map).astype(np.float64)
    probs = _softmax(scores)                               # softmax at every position
    mean = _softmax(scores.mean(axis=(1, 2)))              # the image's score: the average
    best = np.argsort(-mean)[:k]
    pic = _picture(image)
    extent = (0, pic.shape[1], pic.shape[0], 0)
    fig, axes = plt.subplots(1, k + 1, figsize=(3.6 * (k + 1), 3.6), layout="constrained")
    axes[0].imshow(pic, cmap="gray")
    axes[0].set_title(f"input {pic.shape[1]}x{pic.shape[0]}\n"
                      f"score map {scores.shape[2]}x{scores.shape[1]} positions")
    for ax, c in zip(axes[1:], best):
        ax.imshow(pic, cmap="gray", extent=extent)
        shown = ax.imshow(probs[c], cmap="magma", alpha=0.6, vmin=0, vmax=1, extent=extent,
                          interpolation="nearest")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="probability here")
        ax.set_title(f"{classes[c]}\nwhole image (mean score): {100 * mean[c]:.1f}%")
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# -- the architecture diagram ----------------------------------------------------------------

def _count(n: float) -> str:
    """1936412672 -> '1.94 G', 33024 -> '33.0 k'."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g} {prefix}"
    return f"{n:g} "


def _layer_label(row) -> str:
    """The paper's notation: conv3-64, conv1-256, FC-4096, max-pool."""
    if row.kind == "Conv2D":
        f, _, k, _ = row.arrays["weight"]
        return f"conv{k}-{f}"
    if row.kind == "Dense":
        return f"FC-{row.output_shape[0]}"
    short = {"MaxPool2D": "max-pool", "BatchNorm2D": "BN", "LocalResponseNorm": "LRN",
             "GlobalAvgPool2D": "average"}
    return short.get(row.kind, row.kind)


def _describe(rows) -> str:
    """'conv3-64 x2, max-pool': labels in order, repeats of conv+ReLU(+BN) collapsed."""
    labels = [_layer_label(r) for r in rows if r.kind not in ("ReLU", "BatchNorm2D")]
    parts = []
    for label in labels:
        if parts and parts[-1][0] == label:
            parts[-1][1] += 1
        else:
            parts.append([label, 1])
    text = ", ".join(f"{lab} x{n}" if n > 1 else lab for lab, n in parts)
    extras = [e for e, kind in (("BN", "BatchNorm2D"), ("ReLU", "ReLU"))
              if any(r.kind == kind for r in rows)]
    return text + (f"  (+ {', '.join(extras)})" if extras else "")


def model_blocks(rows) -> list[tuple[str, list]]:
    """Group summary rows into boxes: each features block ends at its max-pool; in the
    classifier each Dense (or convolution) starts a box and its ReLU / Dropout join it."""
    groups, current, block = [], [], 0
    for row in rows:
        if row.name.startswith("features."):
            current.append(row)
            if row.kind == "MaxPool2D":
                block += 1
                groups.append((f"block {block}", current))
                current = []
            continue
        if current:
            groups.append((f"block {block + 1}", current))
            current = []
        if row.kind in ("ReLU", "Dropout") and groups and groups[-1][0] == "classifier":
            groups[-1][1].append(row)
        else:
            name = "classifier" if row.kind in ("Dense", "Conv2D") else _layer_label(row).lower()
            groups.append((name, [row]))
    return groups + ([(f"block {block + 1}", current)] if current else [])


def plot_model(model, input_shape, path) -> Path:
    """A diagram of the network, one box per block, as Keras' ``plot_model`` draws one.

    ``model``: a VGG (or any Sequential) -- summarised from its layers' ``output_shape``
    -- or a VGGSettings, summarised without allocating a single weight (VGG-16's diagram
    costs no 528 MB). ``input_shape`` is one example's (C, H, W), or None for the size the
    settings were built for. Each box: its layers, output shape, parameters, MACs.
    """
    from minivgg.models.config import VGGSettings
    from minivgg.summary import summarize, summarize_settings
    summary = (summarize_settings(model, input_shape) if isinstance(model, VGGSettings)
               else summarize(model, input_shape))
    groups = model_blocks(summary.rows)
    n = len(groups) + 1
    fig, ax = plt.subplots(figsize=(8.5, 0.62 * n + 1.0))
    ax.set_xlim(0, 1)
    ax.set_ylim(n - 0.4, -0.6)
    ax.axis("off")
    boxes = [("input", f"{' x '.join(map(str, summary.input_shape))}", 0, 0, "")]
    for name, rows in groups:
        what = _describe(rows)
        span = rows[0].name if len(rows) == 1 else f"{rows[0].name} .. {rows[-1].name}"
        boxes.append((f"{name}: {what}" if what.lower() != name else name,
                      " x ".join(map(str, rows[-1].output_shape)),
                      sum(r.params for r in rows), sum(r.macs for r in rows), span))
    largest = max(max(b[2] for b in boxes), 1)
    for y, (label, shape, params, macs, span) in enumerate(boxes):
        shade = plt.cm.Blues(0.15 + 0.6 * params / largest)    # darker: more parameters
        ax.add_patch(FancyBboxPatch(
            (0.02, y - 0.3), 0.96, 0.6, boxstyle="round,pad=0.01", fc=shade, ec="0.3"))
        ink = "white" if params / largest > 0.6 else "black"
        ax.text(0.04, y - 0.07, label, fontsize=8.5, va="center", color=ink, weight="bold")
        detail = f"output {shape}" + (f"   |   {params:,} params" if y else "") + \
            (f"   |   {_count(macs)}MACs" if macs else "")
        ax.text(0.04, y + 0.17, detail, fontsize=7.5, va="center", color=ink)
        ax.text(0.96, y - 0.07, span, fontsize=7, va="center", ha="right", color=ink,
                family="monospace")                             # the layers' paths
        if y:
            ax.annotate("", (0.5, y - 0.3), (0.5, y - 0.7),
                        arrowprops={"arrowstyle": "->", "color": "0.3"})
    ax.set_title(f"{summary.title}: {summary.total_params:,} parameters, "
                 f"{summary.macs / 1e9:.2f} G MACs per image (darker box: more parameters)",
                 fontsize=9)
    return save_figure(fig, path)


# -- what the commands call: explain, predict --weights, summary --plot (plot_model) ---------

def pretrained_vgg(weights="vgg16", dtype=np.float32):
    """A VGG with torchvision's trained weights: a name ("vgg16", "vgg16_bn", ...; downloaded
    once, minivgg.pretrained) or a file. Configuration, batch norm and classes are read from
    the file: 8, 10, 13 or 16 convolutions are A, B, D or E (1x1 kernels: C)."""
    from minivgg import pretrained
    from minivgg.models import vgg
    from minivgg.models.init import NoDraws
    state = pretrained.load_state(pretrained.resolve_weights(weights))
    convs = [v for key, v in state.items() if key.startswith("features.") and v.ndim == 4]
    config = "C" if any(v.shape[-1] == 1 for v in convs) else \
        {8: "A", 10: "B", 13: "D", 16: "E"}.get(len(convs))
    fcs = sorted((int(key.split(".")[1]), v) for key, v in state.items()
                 if key.startswith("classifier.") and key.endswith(".weight"))
    if config is None or not fcs:
        raise ValueError(f"pretrained_vgg: {weights} holds {len(convs)} convolutions and "
                         f"{len(fcs)} classifier layers; expected a torchvision VGG")
    bn = any(key.endswith(".running_mean") for key in state)
    model = vgg(config, fcs[-1][1].shape[0], 224, batch_norm=bn, dtype=dtype, rng=NoDraws(0))
    return pretrained.load_into(model, state, batch_norm=bn)


def cached_weights(name: str = "vgg16"):
    """The path of torchvision's weights ``name`` if already on this machine (minivgg's or
    torch.hub's cache), else None -- never downloads."""
    from minivgg.weights.hub import WEIGHTS, torch_hub_dir, weights_dir
    for folder in (weights_dir(), torch_hub_dir()):
        if (folder / WEIGHTS[name]).is_file():
            return folder / WEIGHTS[name]
    return None


def predict_photo(model, photo, k: int = 5) -> list[tuple[int, str, float]]:
    """The ``k`` likeliest ImageNet classes of a photo (path, PIL image or uint8 array), as
    (index, name, probability): torchvision's preprocessing, one evaluation forward."""
    from minivgg.backend import device_of, to_device
    from minivgg.imagenet import preprocess, top_k
    from minivgg.modes import no_grad
    weight = model.parameters()[0].data
    x = to_device(preprocess(photo).astype(weight.dtype), device_of(weight))
    with no_grad():
        return top_k(model.forward(x, training=False), k)


def explain_file(model, x, image, classes, method: str = "gradcam", layer=None, k=None,
                 out_path="explain.png", top: int = 5) -> dict:
    """Explain one prepared image and draw it (``minivgg explain``): returns what was drawn.

    ``x`` (1, C, H, W) is what the network reads (normalised, on the model's device);
    ``image`` uint8 (H, W, 3) is what a person sees; ``classes`` names the outputs; ``k``
    the class to explain (None: the predicted one). Returns {"class", "name", "method",
    "layer" (Grad-CAM's layer path, else None), "top" [(index, name, p)], "path"}.
    """
    from minivgg import explain
    from minivgg.imagenet import top_k
    from minivgg.modes import no_grad
    with no_grad():
        logits = model.forward(x, training=False)
    best = top_k(logits, min(top, len(classes)), list(classes))
    k = best[0][0] if k is None else int(k)
    path = explain.resolve_layer(model, layer) if method == "gradcam" else layer
    heat = explain.explain(model, x, k, method, path)      # a layer for saliency: refused
    name = {"saliency": "saliency", "smoothgrad": "SmoothGrad", "gradcam": "Grad-CAM"}[method]
    title = f"{name} of class {classes[k]!r} ({k})" + (f" at {path}" if path else "")
    out = plot_explanation(image, heat, best, out_path, title, name)
    return {"class": k, "name": classes[k], "method": method, "layer": path, "top": best,
            "path": out}
