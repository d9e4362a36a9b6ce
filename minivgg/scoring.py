"""How good a model is on a loader: mean loss and top-1 / top-5 accuracy, in evaluation
mode and without caches (``model.eval()`` and ``minivgg.no_grad()``)."""

from __future__ import annotations

import numpy as np

from minivgg.backend import asnumpy, get_array_module
from minivgg.losses import SoftmaxCrossEntropy
from minivgg.modes import no_grad


def count_correct(logits, labels, k: int = 5) -> tuple[int, int]:
    """How many rows have the label as the top prediction, and among the top ``k``."""
    xp = get_array_module(logits)
    k = min(k, logits.shape[1])
    top = xp.argsort(-logits, axis=1)[:, :k]                  # (N, k), best first
    hits = top == labels[:, None]
    return int(hits[:, 0].sum()), int(hits.any(axis=1).sum())


def evaluate(model, loader, predictions: bool = False) -> dict:
    """Mean loss and top-1 / top-5 accuracy (in %) over a loader, in evaluation mode.

    With ``predictions=True`` also returns "predicted" and "labels" (host int arrays).
    The model's mode is restored afterwards.
    """
    loss_fn, n, loss_sum, top1, top5 = SoftmaxCrossEntropy(), 0, 0.0, 0, 0
    predicted, labels, was_training = [], [], model.training
    model.eval()
    try:
        with no_grad():
            for x, y in loader:
                logits = model.forward(x, training=False)
                loss_sum += loss_fn.forward(logits, y) * len(y)
                c1, c5 = count_correct(logits, y)
                top1, top5, n = top1 + c1, top5 + c5, n + len(y)
                if predictions:
                    predicted.append(asnumpy(logits.argmax(axis=1)))
                    labels.append(asnumpy(y))
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate: the loader produced no batches")
    out = {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": n}
    if predictions:
        out["predicted"], out["labels"] = np.concatenate(predicted), np.concatenate(labels)
    return out
