"""What the network sees: explanations computed from the hand-written backward passes.

Every method below is one forward pass and one backward pass that the learner already
knows (``model.forward``, ``model.backward``); only the *upstream gradient* changes:

    class_score_gradient   d score_k / d x: a one-hot gradient on the logits, down to the image
    saliency               max_c |d score_k / d x_c|           (Simonyan et al. 2014, Sect. 3)
    smoothgrad             the same, averaged over noisy copies of x    (Smilkov et al. 2017)
    gradcam                ReLU(sum_c alpha_c A_c) at a block A          (Selvaraju et al. 2017)
    fgsm                   x + eps * sign(d loss / d x): an adversarial example
                                                                         (Goodfellow et al. 2015)
    class_score_map        the paper's dense evaluation (Sect. 3.2): a map of class scores

"score_k" is the logit of class k, *before* the softmax, as in all three papers: the
softmax probability of k also rises when the other classes' scores fall, which would mix
"evidence for k" with "evidence against the others".

Every forward here runs in evaluation mode (``forward(x, training=False)``: dropout off,
batch norm on its running statistics), which neither reads nor changes the model's mode
and never updates a running statistic. Like any backward pass, these overwrite the
parameters' ``.grad``. Inputs are NumPy or CuPy arrays, float32 or float64 (the model's
dtype); the results live where the input lives, in its dtype.
"""

from __future__ import annotations

import contextlib

import numpy as np

from minivgg.backend import asnumpy, device_of, get_array_module
from minivgg.layers import Conv2D, MaxPool2D
from minivgg.losses import SoftmaxCrossEntropy
from minivgg.modes import grad_enabled, no_grad

METHODS = ("saliency", "smoothgrad", "gradcam")


# -- the pieces every method shares ----------------------------------------------------------

def _one_image(x, who: str):
    """(C, H, W) or (1, C, H, W) -> (1, C, H, W)."""
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"{who}: expected one image, (C, H, W) or (1, C, H, W), got shape "
                         f"{tuple(x.shape)}; call it once per image")
    return x


def _leaves(model) -> list:
    """(dotted path, layer) of every leaf layer, in the order forward runs them."""
    return list(model.named_layers()) if hasattr(model, "named_layers") else [("", model)]


def _one_hot(logits, k):
    """The upstream gradient that picks score k (or k[n] for row n) out of the logits."""
    xp = get_array_module(logits)
    if logits.ndim != 2:
        raise ValueError(f"explain: the model must output class scores (N, classes), got shape "
                         f"{tuple(logits.shape)}; for a map of scores use class_score_map")
    n, classes = logits.shape
    k = np.broadcast_to(asnumpy(k), (n,))
    if k.dtype.kind not in "iu" or k.min() < 0 or k.max() >= classes:
        raise ValueError(f"explain: class k must be an integer in [0, {classes}), got {k}")
    g = xp.zeros_like(logits)
    g[xp.arange(n), xp.asarray(k)] = 1
    return g


@contextlib.contextmanager
def _gradient_to_input(model, who: str):
    """Let the gradient reach the image.

    A training run switches off the first convolution's input gradient (its input is the
    data, minivgg/run.py), so ``backward`` would stop there and return None. It is switched
    on for the duration and restored afterwards.
    """
    if not grad_enabled():
        raise RuntimeError(f"{who}: needs gradients, but was called inside no_grad(), where "
                           "forward passes keep nothing for backward")
    off = [layer for _, layer in _leaves(model)
           if isinstance(layer, Conv2D) and not layer.input_grad]
    for layer in off:
        layer.input_grad = True
    try:
        yield
    finally:
        for layer in off:
            layer.input_grad = False


# -- gradients of a class score --------------------------------------------------------------

def class_score_gradient(model, x, k):
    """d score_k / d x for a batch x (N, C, H, W): same shape, dtype and device as x.

    One forward in evaluation mode gives the logits z (N, classes); backward from the
    upstream gradient e_k (one-hot: 1 at class k, 0 elsewhere) gives, by the chain rule,

        sum_j (e_k)_j * d z_j / d x  =  d z_k / d x.

    ``k`` is one class for every row, or one per row. In evaluation mode the rows do not
    interact (batch norm uses fixed statistics), so row n's gradient is its own image's.
    """
    with _gradient_to_input(model, "class_score_gradient"):
        logits = model.forward(x, training=False)
        return model.backward(_one_hot(logits, k))


def saliency(model, x, k):
    """Vanilla gradient saliency (Simonyan, Vedaldi & Zisserman 2014, Sect. 3.1): (H, W).

    Near x the class score is roughly linear, score_k(x') ~ w . x' + b with w = d score_k/dx,
    so |w| says how much each pixel matters. A colour image has three derivatives per
    pixel; the paper keeps the largest:  M[i, j] = max_c |w[c, i, j]|.
    """
    g = class_score_gradient(model, _one_image(x, "saliency"), k)
    return get_array_module(g).abs(g[0]).max(axis=0)


def smoothgrad(model, x, k, n: int = 25, sigma: float = 0.15, seed: int = 0,
               batch_size: int = 4):
    """SmoothGrad (Smilkov et al. 2017): the saliency of the mean gradient at noisy copies.

        g_bar = (1/n) sum_{i=1..n} d score_k / d x (x + eps_i),   eps_i ~ N(0, s^2),
        s     = sigma * (max x - min x)                                (sigma: 10-20 %)
        M     = max_c |g_bar[c]|                                          (H, W)

    The raw gradient jumps from pixel to pixel (ReLU and max-pool switch on and off);
    averaging over a neighbourhood of x keeps what is consistent. The copies run
    ``batch_size`` at a time; ``seed`` fixes the noise.
    """
    x = _one_image(x, "smoothgrad")
    if n < 1 or sigma < 0:
        raise ValueError(f"smoothgrad: expected n >= 1 and sigma >= 0, got {n} and {sigma}")
    xp, rng = get_array_module(x), np.random.default_rng(seed)
    s = sigma * float(x.max() - x.min())
    total = xp.zeros(x.shape[1:], dtype=x.dtype)
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        noise = rng.standard_normal((m, *x.shape[1:])).astype(x.dtype) * x.dtype.type(s)
        total += class_score_gradient(model, x + xp.asarray(noise), k).sum(axis=0)
    return xp.abs(total / n).max(axis=0)


# -- Grad-CAM ---------------------------------------------------------------------------------

def conv_blocks(model) -> list[str]:
    """The path of each block's output: the layer just before each MaxPool2D.

    In every VGG that is the block's last ReLU (A-LRN's block 1: its LRN). For VGG-16:
    ["features.3", "features.8", "features.15", "features.22", "features.29"]; block 5 is
    the "last convolutional layer" (relu5_3, 14 x 14 at 224) that Grad-CAM uses.
    """
    blocks, before = [], None
    for path, layer in _leaves(model):
        if isinstance(layer, MaxPool2D) and before is not None:
            blocks.append(before)
        before = path
    return blocks


def resolve_layer(model, layer=None) -> str:
    """The path of the layer whose output Grad-CAM reads.

    ``None``: the last block; an int or a digit string b: block b (1-based, conv_blocks);
    otherwise a layer path such as "features.28" (that layer's output).
    """
    blocks = conv_blocks(model)
    if layer is None or isinstance(layer, int) or str(layer).isdigit():
        b = len(blocks) if layer is None else int(layer)
        if not 1 <= b <= len(blocks):
            raise ValueError(f"gradcam: block {layer} does not exist; the model has blocks "
                             f"1..{len(blocks)} (outputs {', '.join(blocks)})")
        return blocks[b - 1]
    paths = [path for path, _ in _leaves(model)]
    if layer not in paths[:-1]:
        raise ValueError(f"gradcam: no layer {layer!r} before the output; expected a block "
                         f"number 1..{len(blocks)} or one of {', '.join(paths[:-1])}")
    return layer


def upsample_bilinear(m, height: int, width: int):
    """(h, w) -> (height, width), bilinear with pixel centres aligned.

    Output pixel j samples the input at (j + 0.5) * h / height - 0.5, clamped to the
    image (what ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
    computes). NumPy or CuPy, in the map's dtype.
    """
    xp = get_array_module(m)

    def taps(n_in, n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        return xp.asarray(lo), xp.asarray(hi), xp.asarray((pos - lo).astype(m.dtype))

    y0, y1, wy = taps(m.shape[0], height)
    x0, x1, wx = taps(m.shape[1], width)
    rows = m[y0] * (1 - wy)[:, None] + m[y1] * wy[:, None]            # (height, w)
    return rows[:, x0] * (1 - wx) + rows[:, x1] * wx                  # (height, width)


def gradcam(model, x, k, layer=None):
    """Grad-CAM (Selvaraju et al. 2017, Sect. 3): where in the image the evidence for k is.

    With A (C, h, w) the output of a block (``layer``, see resolve_layer):

        alpha_c = (1 / hw) sum_{i,j} d score_k / d A[c, i, j]     how much channel c matters
        L       = ReLU(sum_c alpha_c A[c])                       (h, w): only positive evidence

    and L is upsampled bilinearly to the image's (H, W). Computed without autograd: the
    layers up to A run without caches (``no_grad``), the rest with them; backward from the
    one-hot score runs through the rest only (the layers after A, in reverse).
    """
    x = _one_image(x, "gradcam")
    xp, path = get_array_module(x), resolve_layer(model, layer)
    leaves = [lay for _, lay in _leaves(model)]
    cut = [p for p, _ in _leaves(model)].index(path) + 1
    if not grad_enabled():
        raise RuntimeError("gradcam: needs gradients, but was called inside no_grad()")
    with no_grad():
        a = x
        for lay in leaves[:cut]:
            a = lay.forward(a, training=False)
    if a.ndim != 4:
        raise ValueError(f"gradcam: {path} outputs shape {tuple(a.shape)}; expected a map "
                         "(1, C, h, w) -- pick a layer of the features")
    h = a.copy()                  # the next layer may write over its input (ReLU in place)
    for lay in leaves[cut:]:
        h = lay.forward(h, training=False)
    d = _one_hot(h, k)
    for lay in reversed(leaves[cut:]):
        d = lay.backward(d)
    alpha = d[0].mean(axis=(1, 2))                                    # (C,)
    cam = xp.maximum((alpha[:, None, None] * a[0]).sum(axis=0), 0)    # (h, w)
    return upsample_bilinear(cam, x.shape[2], x.shape[3])


# -- adversarial examples and dense evaluation -----------------------------------------------

def fgsm(model, x, label, eps: float, clip=None):
    """One fast-gradient-sign step (Goodfellow, Shlens & Szegedy 2015, Sect. 4):

        x_adv = x + eps * sign(d loss(model(x), label) / d x)

    the step of max-norm eps that increases the linearised cross-entropy the most: every
    input value moves by exactly eps (or 0 where the gradient is 0). In a high-dimensional
    input many tiny changes add up to a large change of the score. ``x`` (N, C, H, W),
    ``label`` an int or one per row; ``clip`` = (lo, hi) keeps x_adv in a valid range.
    """
    xp = get_array_module(x)
    labels = xp.asarray(np.broadcast_to(asnumpy(label), (x.shape[0],)).copy())
    loss = SoftmaxCrossEntropy()
    with _gradient_to_input(model, "fgsm"):
        loss.forward(model.forward(x, training=False), labels)
        dx = model.backward(loss.backward())
    x_adv = x + xp.sign(dx) * x.dtype.type(eps)
    return x_adv if clip is None else xp.clip(x_adv, clip[0], clip[1])


def class_score_map(model, x):
    """Dense evaluation (the paper's Sect. 3.2) of one image larger than the training size.

    The head becomes convolutions (minivgg.models.dense_eval.to_dense_eval, average=False)
    and slides over the feature map: one score vector per 32-pixel step. Returns the map
    (classes, H', W'); its mean over positions is the paper's score for the whole image.
    """
    from minivgg.models.dense_eval import to_dense_eval
    x = _one_image(x, "class_score_map")
    dense = to_dense_eval(model, average=False)
    if device_of(x) == "gpu":
        dense.to("gpu")
    with no_grad():
        return dense.forward(x, training=False)[0]


def explain(model, x, k, method: str = "gradcam", layer=None):
    """The (H, W) map of ``method`` ("saliency", "smoothgrad" or "gradcam"; ``layer`` is
    Grad-CAM's block) for class k of one image."""
    if method not in METHODS:
        raise ValueError(f"explain: unknown method {method!r}; expected one of {METHODS}")
    if layer is not None and method != "gradcam":
        raise ValueError(f"explain: a layer is chosen for gradcam only, not for {method}")
    if method == "gradcam":
        return gradcam(model, x, k, layer)
    return saliency(model, x, k) if method == "saliency" else smoothgrad(model, x, k)

