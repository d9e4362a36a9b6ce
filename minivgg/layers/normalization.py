"""Normalisation layers: local response normalisation (AlexNet, VGG A-LRN) and batch norm."""

from __future__ import annotations

import numpy as np

from minivgg import kernels
from minivgg.backend import get_array_module
from minivgg.layers.base import Layer, Parameter
from minivgg.modes import grad_enabled


def _window_sum(a, half: int):
    """s[:, c] = sum of a[:, c'] over the channels c' with |c' - c| <= half (zeros outside)."""
    xp = get_array_module(a)
    channels = a.shape[1]
    s = a.copy()
    for offset in range(1, half + 1):
        if offset >= channels:
            break
        s[:, offset:] += a[:, :-offset]      # neighbour below:  c' = c - offset
        s[:, :-offset] += a[:, offset:]      # neighbour above:  c' = c + offset
    return xp.ascontiguousarray(s)


class LocalResponseNorm(Layer):
    """Local response normalisation across channels, in the convention of AlexNet
    (Krizhevsky et al., 2012), which the VGG paper uses in configuration A-LRN.

    For an input a of shape (N, C, H, W), at each position and channel c::

        d_c = k + alpha * sum_{c' = max(0, c - n//2)}^{min(C-1, c + n//2)} a_{c'}^2
        b_c = a_c / d_c^beta

    with the paper's k = 2, n = 5, alpha = 1e-4, beta = 0.75 (n odd: the window is centred).

    Backward. b_i depends on a_j through a_i (j = i) and through d_i (j in the window of i)::

        db_i/da_j = [i = j] d_i^-beta - 2 alpha beta a_i a_j d_i^(-beta-1) [|i - j| <= n//2]

    so, with t = dout * a * d^(-beta-1) and the window symmetric,

        dx = dout * d^-beta - 2 alpha beta * a * window_sum(t)

    PyTorch's ``torch.nn.LocalResponseNorm(size, alpha, beta, k)`` divides alpha by the
    window size: it matches this layer with ``alpha_torch = alpha * n``.
    """

    def __init__(self, n: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75):
        if n < 1 or n % 2 == 0:
            raise ValueError(f"LocalResponseNorm: n (the window size in channels) must be a "
                             f"positive odd integer, got {n}")
        self.n, self.k, self.alpha, self.beta = n, k, alpha, beta
        self.cache = None

    def forward(self, x, training=None):
        self._check_input(x, 4, "(N, C, H, W)")
        d = self.k + self.alpha * _window_sum(x * x, self.n // 2)
        scale = d ** -self.beta                                   # d^-beta
        self._keep((x, d, scale))
        return x * scale

    def backward(self, dout):
        x, d, scale = self._cached(self.cache)
        self._check_grad(dout, x.shape)
        self.cache = None
        t = dout * x * scale / d                                  # dout * a * d^(-beta-1)
        return dout * scale - (2 * self.alpha * self.beta) * x * _window_sum(t, self.n // 2)

    def __repr__(self):
        return f"LocalResponseNorm(n={self.n}, k={self.k}, alpha={self.alpha}, beta={self.beta})"


class BatchNorm2D(Layer):
    """Batch normalisation (Ioffe & Szegedy, 2015) of each channel of an NCHW batch.

    Training, with statistics over the M = N*H*W values of each channel::

        mu   = mean(x)            var = mean((x - mu)^2)          (per channel, shape (C,))
        xhat = (x - mu) / sqrt(var + eps)
        y    = gamma * xhat + beta

    and the running statistics move towards the batch's (PyTorch's convention: the running
    variance takes the unbiased estimate var * M / (M - 1))::

        running_mean = (1 - momentum) * running_mean + momentum * mu
        running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)

    Evaluation uses running_mean and running_var instead of the batch's statistics:
    y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta, a fixed affine map
    per channel, whose backward is dx = dout * gamma / sqrt(running_var + eps) (dgamma and
    dbeta as below, with that xhat).

    Backward (training), the compact form: with sums over the M values of a channel,

        dbeta  = sum(dout)
        dgamma = sum(dout * xhat)
        dx     = gamma / (M * sqrt(var + eps)) * (M * dout - dbeta - xhat * dgamma)

    The last two terms are the gradient flowing through mu and var: every value in the
    batch influenced every normalised output of its channel.

    gamma and beta are Parameters without weight decay; running_mean and running_var are
    buffers (``named_buffers()``), saved by ``state_dict()``.

    ``forward(x, relu=True)`` returns max(y, 0): batch norm and the ReLU after it in one
    pass. Its backward takes the upstream gradient of that output, zeroes it where
    gamma * xhat + beta <= 0 (the ReLU's mask, recomputed from the cached xhat: nothing
    more is kept) and goes on as above. Sequential does this for every BatchNorm2D that a
    ReLU follows, where the kernels fuse the two (``kernels.fuses_bn_relu``: Numba);
    the ReLU layer is then skipped, and the numbers are the same as the two layers'.

    The arithmetic runs in minivgg.kernels (kernels/batch_norm.py): its reference is the
    math above in NumPy; the Numba loops compute each sum in one pass over NHWC memory.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype=np.float32):
        if num_features < 1:
            raise ValueError(f"BatchNorm2D: num_features must be >= 1, got {num_features}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm2D: momentum must be in [0, 1], got {momentum}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.gamma = Parameter(np.ones(num_features, dtype=dtype), decay=False,
                               name="BatchNorm2D.gamma")
        self.beta = Parameter(np.zeros(num_features, dtype=dtype), decay=False,
                              name="BatchNorm2D.beta")
        self.running_mean = np.zeros(num_features, dtype=dtype)
        self.running_var = np.ones(num_features, dtype=dtype)
        self.cache = None

    def named_buffers(self):
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def _check_nchw(self, x) -> None:
        """A 4-D input with this layer's channels and dtype, or an error naming the layer."""
        self._check_input(x, 4, "(N, C, H, W)")
        if x.shape[1] != self.num_features:
            self._fail(f"expected {self.num_features} channels, got input of shape "
                       f"{tuple(x.shape)} with {x.shape[1]}")
        self._check_dtype(x, self.gamma.data)

    def forward(self, x, training=None, relu: bool = False):
        self._check_nchw(x)
        xp = get_array_module(x)
        if not self._is_training(training):
            mean, var = self.running_mean, self.running_var
        else:
            m = x.shape[0] * x.shape[2] * x.shape[3]
            if m < 2:
                self._fail(f"training needs more than one value per channel to estimate a "
                           f"variance, got input of shape {tuple(x.shape)}")
            mean, var = kernels.batchnorm_statistics(x)
            mom = self.momentum
            self.running_mean[...] = (1 - mom) * self.running_mean + mom * mean
            self.running_var[...] = (1 - mom) * self.running_var + mom * var * (m / (m - 1))
        inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype)
        y, xhat = kernels.batchnorm_normalize(x, mean, inv_std, self.gamma.data,
                                              self.beta.data, keep_xhat=grad_enabled(),
                                              relu=relu)
        self._keep((self._is_training(training), xhat, inv_std, relu))
        return y

    def backward(self, dout):
        batch_statistics, xhat, inv_std, relu = self._cached(self.cache)
        self._check_grad(dout, xhat.shape)
        self.cache = None
        dx, dgamma, dbeta = kernels.batchnorm_backward(dout, xhat, self.gamma.data, inv_std,
                                                       batch_statistics, relu=relu,
                                                       beta=self.beta.data)
        self.beta.grad[...] = dbeta
        self.gamma.grad[...] = dgamma
        return dx

    def __repr__(self):
        return f"BatchNorm2D({self.num_features}, eps={self.eps}, momentum={self.momentum})"
