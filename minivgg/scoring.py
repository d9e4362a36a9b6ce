"""How good a model is on a loader: mean loss and top-1 / top-5 accuracy, in evaluation
mode and without caches (``model.eval()`` and ``minivgg.no_grad()``).

The sums stay on the device until the end: one host sync per evaluation, not two per batch.
"""

from __future__ import annotations

import numpy as np

from minivgg.backend import asnumpy, get_array_module
from minivgg.losses import SoftmaxCrossEntropy
from minivgg.modes import no_grad


def label_ranks(logits, labels):
    """Where each row's label ranks among its logits (0: the top prediction), (N,).

        rank_n = #{j : z_nj > z_n,y}  +  #{j < y : z_nj = z_n,y}

    the label's position in a stable sort of the row, best first (ties go to the lower
    class index, as ``argmax`` does). O(N K) comparisons, no sort.
    """
    xp = get_array_module(logits)
    own = logits[xp.arange(len(labels)), labels][:, None]            # (N, 1)
    earlier = xp.arange(logits.shape[1])[None, :] < labels[:, None]   # (N, K)
    return ((logits > own) | ((logits == own) & earlier)).sum(axis=1)


def correct_counts(logits, labels, k: int = 5):
    """(top-1, top-k) counts as 0-d arrays on the logits' device: nothing waits for it."""
    if k <= 1:
        top1 = (logits.argmax(axis=1) == labels).sum()
        return top1, top1
    ranks = label_ranks(logits, labels)
    return (ranks == 0).sum(), (ranks < min(k, logits.shape[1])).sum()


def count_correct(logits, labels, k: int = 5) -> tuple[int, int]:
    """How many rows have the label as the top prediction, and among the top ``k``."""
    top1, topk = correct_counts(logits, labels, k)
    return int(top1), int(topk)


def labels_fit(loader, num_classes: int) -> bool:
    """Whether ``loader`` checked, once for its whole data set, that every label lies in
    [0, num_classes) (a DataLoader records the range as ``label_range``); then the loss
    need not check each batch, which would wait for the device."""
    span = getattr(loader, "label_range", None)
    return span is not None and span[0] >= 0 and span[1] < num_classes


def evaluate(model, loader, predictions: bool = False) -> dict:
    """Mean loss and top-1 / top-5 accuracy (in %) over a loader, in evaluation mode.

    With ``predictions=True`` also returns "predicted" and "labels" (host int arrays).
    The model's mode is restored afterwards.
    """
    loss_fn, n, sums = SoftmaxCrossEntropy(), 0, None
    predicted, labels, was_training = [], [], model.training
    model.eval()
    try:
        with no_grad():
            for x, y in loader:
                logits = model.forward(x, training=False)
                xp = get_array_module(logits)
                if sums is None:                    # device scalars: loss, top-1, top-5
                    loss_fn.check_labels = not labels_fit(loader, logits.shape[1])
                    sums = [xp.zeros_like(logits, dtype=dt, shape=())
                            for dt in (xp.float64, xp.int64, xp.int64)]
                sums[0] += loss_fn.forward(logits, y, sync=False).astype(xp.float64) * len(y)
                c1, c5 = correct_counts(logits, y)
                sums[1] += c1
                sums[2] += c5
                n += len(y)
                if predictions:
                    predicted.append(logits.argmax(axis=1))
                    labels.append(y)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate: the loader produced no batches")
    loss_sum, top1, top5 = float(sums[0]), int(sums[1]), int(sums[2])
    out = {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": n}
    if predictions:
        out["predicted"] = np.concatenate([asnumpy(p) for p in predicted])
        out["labels"] = np.concatenate([asnumpy(y) for y in labels])
    return out
