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
    """

    def __init__(self):
        self.cache = None

    def forward(self, logits, labels):
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
        if (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"SoftmaxCrossEntropy: labels must be in [0, {k}), got values "
                             f"from {int(labels.min())} to {int(labels.max())}")
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_norm = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        log_probs = shifted - log_norm                              # (N, K)
        rows = xp.arange(n)
        loss = -log_probs[rows, labels].mean()
        self.cache = (log_probs, labels)
        return float(loss)

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

    def __call__(self, logits, labels):
        return self.forward(logits, labels)
