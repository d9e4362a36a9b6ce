"""The batch-norm kernels: per-channel statistics, normalisation and the backward sums.

Public functions in the manner of api.py: each checks its arguments, then hands them to
the reference (reference.py, the specification the layer's docstring derives), to the
Numba loops (cpu.py) or to the CUDA kernels (gpu_channels.py). The fast ones read an NHWC
batch as M = N*H*W rows of C channels:

    batchnorm_statistics(x)                            -> mean, var       (C,) each
    batchnorm_normalize(x, mean, inv_std, gamma, beta) -> y, xhat         like x
    batchnorm_backward(dout, xhat, gamma, inv_std, batch_statistics) -> dx, dgamma, dbeta

Both take ``relu=True`` for batch norm followed by a ReLU: y = max(gamma * xhat + beta, 0),
and backward first lets dout through only where that value was positive. The mask is not
kept: backward recomputes gamma * xhat + beta from xhat, the same arithmetic on the same
numbers, so it is the mask forward applied. The Numba loops do it in the passes they make
anyway (``fuses_bn_relu``): per batch norm and ReLU in training, four passes over the
activations and the ReLU's mask fewer. Elsewhere it is batch norm, then the ReLU kernels.

Why not the reference's array expressions everywhere: in NumPy each is several
whole-array passes with a temporary per operation (``x - mu``, its square, the mean, ...),
and a reduction over axes (0, 2, 3) of NHWC memory walks it with large strides. The Numba
loops make one pass per reduction and one per output, in memory order, with the sums in
float64. On the GPU the same expressions would reduce on a few thread blocks and write
NCHW (C-order) outputs; gpu_channels.py sums with cuBLAS over the whole device and writes
NHWC, so what a convolution hands over stays NHWC through batch norm.

The fast results equal the reference's to rounding: the sums are taken in another order
(in float64 on the CPU), so tests compare with a tolerance, not bit for bit.
"""

from __future__ import annotations

import numpy as np

from minivgg.backend import get_array_module
from minivgg.kernels import api, checks, gpu, gpu_channels, reference
from minivgg.kernels.dispatch import implementation
from minivgg.kernels.layout import as_nhwc, nchw

BLOCKS = 64     # blocks of rows summed in parallel: more than the cores, so one descheduled
                # thread delays only its own block


def _rows(x):
    """``x`` (N, C, H, W) as its NHWC memory, (M, C) rows: a view when already NHWC."""
    t = as_nhwc(x)
    return t.reshape(-1, t.shape[3])


def _image(rows, like):
    """(M, C) rows back to the NCHW view of an NHWC array shaped like ``like``."""
    n, c, h, w = like.shape
    return nchw(rows.reshape(n, h, w, c))


def _per_channel(who, c, dtype, **vectors):
    """Each vector is (C,) of the batch's dtype; returned C-contiguous."""
    for name, v in vectors.items():
        checks.floats(who, name, v, ndim=1)
        checks.shape(who, name, v, (c,), "one value per channel")
    checks.same_dtype(who, x=np.empty(0, dtype), **vectors)
    return [get_array_module(v).ascontiguousarray(v) for v in vectors.values()]


def _block_sums(kernel, a, *args):
    """Run a summing loop over BLOCKS blocks of rows and add the blocks: two (C,) float64."""
    sums = np.empty((min(BLOCKS, a.shape[0]), 2, a.shape[1]), dtype=np.float64)
    kernel(a, *args, sums)
    total = sums.sum(axis=0)
    return total[0], total[1]


def batchnorm_statistics(x):
    """Mean and biased variance of each channel of ``x`` (N, C, H, W), in x's dtype."""
    checks.floats("batchnorm_statistics", "x", x, ndim=4)
    impl = implementation(x)
    if impl is reference:
        return reference.batchnorm_statistics(x)
    rows = _rows(x)
    if impl is gpu:
        return gpu_channels.batchnorm_statistics_rows(rows)
    m = rows.shape[0]
    shift = rows[0].astype(np.float64)          # one value per channel, near its mean
    s1, s2 = _block_sums(impl.channel_moments_rows, rows, shift)
    mean_shifted = s1 / m
    var = np.maximum(s2 / m - mean_shifted * mean_shifted, 0.0)
    return (shift + mean_shifted).astype(x.dtype), var.astype(x.dtype)


def fuses_bn_relu(x) -> bool:
    """Whether batch norm with ``relu=True`` costs no extra pass for ``x``: the Numba
    loops apply the ReLU as they write y (and its gradient as they read dout)."""
    return implementation(x) not in (reference, gpu)


def batchnorm_normalize(x, mean, inv_std, gamma, beta, keep_xhat: bool = True,
                        relu: bool = False):
    """``(y, xhat)``: xhat = (x - mean) * inv_std, y = gamma * xhat + beta, per channel;
    y = max(y, 0) with ``relu`` (a NaN passes, as in relu_forward).

    ``xhat`` is None when ``keep_xhat`` is False (evaluation without gradients).
    """
    who = "batchnorm_normalize"
    checks.floats(who, "x", x, ndim=4)
    checks.same_device(who, x=x, mean=mean, inv_std=inv_std, gamma=gamma, beta=beta)
    mean, inv_std, gamma, beta = _per_channel(who, x.shape[1], x.dtype, mean=mean,
                                              inv_std=inv_std, gamma=gamma, beta=beta)
    impl = implementation(x)
    if impl is reference or impl is gpu:
        if impl is reference:
            y, xhat = reference.batchnorm_normalize(x, mean, inv_std, gamma, beta)
        else:
            y, xhat = gpu_channels.batchnorm_normalize_rows(_rows(x), mean, inv_std, gamma,
                                                            beta, keep_xhat)
            y, xhat = _image(y, x), (None if xhat is None else _image(xhat, x))
        if relu:                                          # the ReLU as its own pass
            y = api.relu_forward(y, inplace=True)[0]
        return y, (xhat if keep_xhat else None)
    n, c, h, w = x.shape
    y = np.empty((n, h, w, c), dtype=x.dtype)
    xhat = np.empty_like(y) if keep_xhat else y          # y as xhat: xhat is overwritten
    impl.batchnorm_normalize_rows(_rows(x), mean, inv_std, gamma, beta, relu,
                                  y.reshape(-1, c), xhat.reshape(-1, c))
    return nchw(y), (nchw(xhat) if keep_xhat else None)


def batchnorm_backward(dout, xhat, gamma, inv_std, batch_statistics: bool,
                       relu: bool = False, beta=None):
    """``(dx, dgamma, dbeta)`` from the upstream gradient and forward's ``xhat``.

    ``batch_statistics``: True when forward normalised with the batch's own mean and
    variance (training), False for the running statistics (evaluation). ``relu``: forward
    applied the ReLU (``relu=True``) with this ``beta``; dout is the gradient of its output.
    """
    who = "batchnorm_backward"
    checks.floats(who, "dout", dout, ndim=4)
    checks.floats(who, "xhat", xhat, ndim=4)
    checks.shape(who, "dout", dout, xhat.shape, "the shape of forward's output")
    checks.same_dtype(who, dout=dout, xhat=xhat)
    if relu and beta is None:
        raise ValueError(f"{who}: relu=True needs beta (the ReLU's mask is recomputed from "
                         "gamma * xhat + beta)")
    beta = gamma if beta is None else beta               # not read without the ReLU
    checks.same_device(who, dout=dout, xhat=xhat, gamma=gamma, inv_std=inv_std, beta=beta)
    gamma, inv_std, beta = _per_channel(who, dout.shape[1], dout.dtype, gamma=gamma,
                                        inv_std=inv_std, beta=beta)
    impl = implementation(dout)
    if impl is reference or impl is gpu:
        if relu:                                          # the ReLU's backward first
            dout = api.relu_backward(dout, reference.batchnorm_relu_mask(xhat, gamma, beta))
        if impl is reference:
            return reference.batchnorm_backward(dout, xhat, gamma, inv_std, batch_statistics)
        dx, dgamma, dbeta = gpu_channels.batchnorm_backward_rows(
            _rows(dout), _rows(xhat), gamma, inv_std, batch_statistics)
        return _image(dx, dout), dgamma, dbeta
    g, xh = _rows(dout), _rows(xhat)
    m, c = g.shape
    dbeta, dgamma = _block_sums(impl.channel_grad_sums_rows, g, xh, gamma, beta, relu)
    # dx = a * dout + b + c_ * xhat: the reference's formula, its per-channel factors
    # gathered (scale / M * (M * dout - dbeta - xhat * dgamma)).
    scale = gamma.astype(np.float64) * inv_std
    a = scale.astype(dout.dtype)
    if batch_statistics:
        b, c_ = (-scale * dbeta / m).astype(dout.dtype), (-scale * dgamma / m).astype(dout.dtype)
    else:
        b = c_ = np.zeros(c, dtype=dout.dtype)
    n, _, h, w = dout.shape
    dx = np.empty((n, h, w, c), dtype=dout.dtype)
    impl.batchnorm_dx_rows(g, xh, gamma, beta, relu, a, b, c_, dx.reshape(-1, c))
    return nchw(dx), dgamma.astype(dout.dtype), dbeta.astype(dout.dtype)
