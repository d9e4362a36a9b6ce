"""Softmax cross-entropy, fused with its gradient."""

from __future__ import annotations

from minivgg.backend import get_array_module


class SoftmaxCrossEntropy:
    """Mean cross-entropy of a softmax over integer class labels.

    Shapes: logits (N, K), labels (N,) integers in [0, K).

        p_i   = exp(z_i - max z) / sum_j exp(z_j - max z)       (shifted: never overflows)
        loss  = mean_n [ logsumexp(z_n) - z_n[y_n] ]
        dz    = (p - onehot(y)) / N

    Subtracting the row maximum before ``exp`` leaves the softmax unchanged and keeps
    logits of 1e4 (or -1e4) finite. The gradient is computed fused: p minus one-hot.
    At uniform logits every class has p = 1/K and the loss is exactly ln K.

    Host syncs. ``forward`` returns a Python float, which waits for the device. With
    ``sync=False`` it returns the loss as a 0-d array where the logits live, and nothing
    waits. Checking that the labels lie in [0, K) reads their minimum and maximum back from
    the device; ``check_labels=False`` skips it, for labels that were validated once for the
    whole data set (the DataLoader does, given ``num_classes``). Their dtype and shape are
    always checked: that costs nothing.
    """

    def __init__(self, check_labels: bool = True):
        self.check_labels = check_labels
        self.cache = None

    def forward(self, logits, labels, sync: bool = True):
        xp = get_array_module(logits)
        if logits.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy: expected logits of shape (N, classes), "
                             f"got shape {tuple(logits.shape)}")
        labels = xp.asarray(labels)
        n, k = logits.shape
        if labels.shape != (n,):
            raise ValueError(f"SoftmaxCrossEntropy: expected labels of shape ({n},), "
                             f"got shape {tuple(labels.shape)}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"SoftmaxCrossEntropy: expected integer labels, got dtype "
                            f"{labels.dtype}")
        if n == 0:
            raise ValueError("SoftmaxCrossEntropy: got an empty batch (0 examples); the mean "
                             "loss of nothing is undefined")
        if self.check_labels:
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= k:
                raise ValueError(f"SoftmaxCrossEntropy: labels must be in [0, {k}), got "
                                 f"values from {low} to {high}")
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_norm = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        log_probs = shifted - log_norm                              # (N, K)
        rows = xp.arange(n)
        loss = -log_probs[rows, labels].mean()
        self.cache = (log_probs, labels)
        return float(loss) if sync else loss

    def backward(self):
        if self.cache is None:
            raise RuntimeError("SoftmaxCrossEntropy: backward() called before forward()")
        log_probs, labels = self.cache
        xp = get_array_module(log_probs)
        n = log_probs.shape[0]
        dlogits = xp.exp(log_probs)
        dlogits[xp.arange(n), labels] -= 1
        dlogits /= n
        return dlogits

    def __call__(self, logits, labels, sync: bool = True):
        return self.forward(logits, labels, sync)
