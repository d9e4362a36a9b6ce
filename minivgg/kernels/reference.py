"""Reference kernels in plain NumPy: the specification every backend must agree with.

These are written to be read. The Numba (cpu.py) and CuPy (gpu.py) kernels compute the
same functions faster; tests check them against these. Called through minivgg.kernels
(api.py) they get checked arguments; called directly, they trust theirs.

Layouts
-------
Images are NCHW. ``im2col`` turns every receptive field of a convolution into one row:

    x      (N, C, H, W)
    cols   (N * OH * OW, C * kh * kw)     row  = (n, oh, ow)       batch-major, then space
                                          col  = (c, i, j)         matches weight.reshape(F, -1)

so a convolution is one matrix product, ``cols @ weight.reshape(F, -1).T``, whose result
(N * OH * OW, F) is the output in NHWC order. ``im2col_planes`` is the same matrix
transposed, (C * kh * kw, N * OH * OW): one row per kernel tap (c, i, j), holding input
plane c shifted by (i, j). Its rows are copies of whole image rows, which is how the Numba
kernels build the columns of an RGB layer fastest (kernels.im2col_by_planes).

Output sizes follow the floor rule (as PyTorch):  OH = (H + 2 * pad - kh) // stride + 1.
"""

from __future__ import annotations

import numpy as np


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length along one axis: floor((size + 2 pad - kernel) / stride) + 1."""
    return (size + 2 * pad - kernel) // stride + 1


def _windows(x, kh: int, kw: int, stride: int, pad: int):
    """Every receptive field of ``x`` (N, C, H, W) as a (N, C, kh, kw, OH, OW) array.

    The loop runs over the kh * kw kernel offsets, not over the output pixels: offset
    (i, j) of every window is one strided slice of the padded image, so there are only
    kh * kw slice copies, each of them a whole (N, C, OH, OW) block.
    """
    n, c, h, w = x.shape
    oh = conv_output_size(h, kh, stride, pad)
    ow = conv_output_size(w, kw, stride, pad)
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    windows = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            windows[:, :, i, j] = padded[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
    return windows


def _into(out, a):
    """``a``, or ``a`` copied into ``out`` when one is given."""
    if out is None:
        return a
    out[...] = a
    return out


def im2col(x, kh: int, kw: int, stride: int = 1, pad: int = 0, out=None):
    """Unfold the receptive fields of ``x`` (N, C, H, W) into rows: (N*OH*OW, C*kh*kw).

    ``out``, if given, is a (N*OH*OW, C*kh*kw) array to write the rows into (a layer reuses
    one buffer from step to step instead of asking the OS for fresh pages each time).
    """
    windows = _windows(x, kh, kw, stride, pad)
    n, c, _, _, oh, ow = windows.shape
    # (N, C, kh, kw, OH, OW) -> (N, OH, OW, C, kh, kw) -> rows of receptive fields
    return _into(out, windows.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, c * kh * kw))


def im2col_planes(x, kh: int, kw: int, stride: int = 1, pad: int = 0, out=None):
    """im2col's matrix transposed: (C*kh*kw, N*OH*OW), ``im2col(x).T`` in C order.

    Row (c, i, j) is input plane c of every image, shifted by the kernel offset (i, j) (and
    strided): the same numbers as im2col's, in an order that copies whole image rows.
    """
    windows = _windows(x, kh, kw, stride, pad)
    n, c, _, _, oh, ow = windows.shape
    # (N, C, kh, kw, OH, OW) -> (C, kh, kw, N, OH, OW) -> one row per kernel tap
    return _into(out, windows.transpose(1, 2, 3, 0, 4, 5).reshape(c * kh * kw, n * oh * ow))


def col2im(cols, x_shape, kh: int, kw: int, stride: int = 1, pad: int = 0):
    """Fold rows (N*OH*OW, C*kh*kw) back into an image (N, C, H, W): the adjoint of im2col.

    Where receptive fields overlap (stride < kernel) one input pixel appears in several
    rows of ``cols``; its gradient is the *sum* of the gradients of all those copies, so
    col2im accumulates (``+=``) instead of assigning. Padding is cut off at the end: the
    gradient that flows into the zeros of the border belongs to no input pixel.
    """
    n, c, h, w = x_shape
    oh = conv_output_size(h, kh, stride, pad)
    ow = conv_output_size(w, kw, stride, pad)
    cols = cols.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)
    padded = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            padded[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += cols[:, :, i, j]
    return padded[:, :, pad:pad + h, pad:pad + w]


def maxpool_forward(x, k: int = 2, stride: int = 2):
    """Max-pooling of ``x`` (N, C, H, W) with a k x k window.

    Returns ``(out, argmax)``, both (N, C, OH, OW). ``argmax`` is the position of the
    maximum inside its window, i * k + j. When several entries tie, the *first* one in
    row-major order wins (as in PyTorch), so exactly one input receives the gradient.
    """
    n, c, h, w = x.shape
    oh = conv_output_size(h, k, stride, 0)
    ow = conv_output_size(w, k, stride, 0)
    windows = np.empty((k * k, n, c, oh, ow), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            windows[i * k + j] = x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
    argmax = windows.argmax(axis=0)  # np.argmax returns the first maximum
    out = np.take_along_axis(windows, argmax[None], axis=0)[0]
    return out, argmax


def maxpool_backward(dout, argmax, x_shape, k: int = 2, stride: int = 2):
    """Route each output gradient to the input that was the maximum of its window.

    Every other input of the window gets zero. With overlapping windows (stride < k) an
    input can be the maximum of several windows, so the gradients accumulate.
    """
    n, c, oh, ow = dout.shape
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for i in range(k):
        for j in range(k):
            routed = np.where(argmax == i * k + j, dout, 0)
            dx[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += routed
    return dx


def matmul(a, b, out=None):
    """The matrix product ``a @ b`` of 2-D arrays, into ``out`` if given: NumPy's BLAS GEMM.

    Every convolution and Dense layer reduces to this; it goes through the kernels so that
    the Numba kernels can schedule their threads (blas.py) and the GPU can apply TF32.
    """
    return np.matmul(a, b, out=out)


def channel_sums(a, out=None):
    """The sum of each column of a 2-D array ``a`` (M, C): ``a.sum(axis=0)``, shape (C,).

    The bias gradients (dY summed over every output position) and batch norm's statistics
    are such sums, over the M = N*OH*OW rows of a channels-last array.
    """
    return np.sum(a, axis=0, out=out)


def relu_forward(x, inplace: bool = False):
    """Rectified linear unit: ``y = max(x, 0)`` and the mask ``x > 0`` backward needs.

    Returns ``(y, mask)``, both shaped like ``x``; mask is boolean (one byte per entry).
    A NaN stays NaN (as in PyTorch), so a diverging network cannot hide it from the loss.
    ``inplace``: y is written over x (and x is returned as y).
    """
    mask = x > 0
    return np.maximum(x, np.zeros((), dtype=x.dtype), out=x if inplace else None), mask


def relu_backward(dout, mask):
    """Gradient of ReLU: ``dx = dout * [x > 0]`` (the derivative at exactly 0 is taken as 0)."""
    return np.where(mask, dout, np.zeros((), dtype=dout.dtype))


# -- batch normalisation: per-channel statistics over (N, H, W) ---------------------------------

def batchnorm_statistics(x):
    """Mean and (biased) variance of each channel of ``x`` (N, C, H, W): two (C,) arrays.

    ``var = mean((x - mu)^2)``: the two-pass formula (centre first, then square), which
    stays accurate when the mean is large next to the spread.
    """
    mu = x.mean(axis=(0, 2, 3))
    centred = x - mu.reshape(1, -1, 1, 1)
    return mu, (centred * centred).mean(axis=(0, 2, 3))


def batchnorm_normalize(x, mean, inv_std, gamma, beta):
    """``xhat = (x - mean) * inv_std`` and ``y = gamma * xhat + beta``, per channel.

    Returns ``(y, xhat)``, both shaped like ``x``; the per-channel arguments are (C,).
    """
    def per_channel(v):
        return v.reshape(1, -1, 1, 1)
    xhat = (x - per_channel(mean)) * per_channel(inv_std)
    return per_channel(gamma) * xhat + per_channel(beta), xhat


def batchnorm_relu_mask(xhat, gamma, beta):
    """Where a ReLU after batch norm passes its input: ``gamma * xhat + beta > 0``, the
    mask relu_forward takes of batch norm's output, recomputed from xhat (so batch norm
    with a fused ReLU needs to keep nothing more)."""
    def per_channel(v):
        return v.reshape(1, -1, 1, 1)
    return per_channel(gamma) * xhat + per_channel(beta) > 0


def batchnorm_backward(dout, xhat, gamma, inv_std, batch_statistics: bool):
    """Gradients of batch norm: ``(dx, dgamma, dbeta)``, with sums over (N, H, W).

        dbeta  = sum(dout)              dgamma = sum(dout * xhat)
        dx     = gamma * inv_std / M * (M * dout - dbeta - xhat * dgamma)   (batch statistics)
        dx     = gamma * inv_std * dout                       (running statistics: constants)

    M = N * H * W, the values each channel's statistics were taken over.
    """
    def per_channel(v):
        return v.reshape(1, -1, 1, 1)
    dbeta = dout.sum(axis=(0, 2, 3))
    dgamma = (dout * xhat).sum(axis=(0, 2, 3))
    scale = per_channel(gamma * inv_std)
    if not batch_statistics:
        return dout * scale, dgamma, dbeta
    m = dout.shape[0] * dout.shape[2] * dout.shape[3]
    dx = scale / m * (m * dout - per_channel(dbeta) - xhat * per_channel(dgamma))
    return dx, dgamma, dbeta


# -- naive loops: test oracles and teaching material, never used for training --------------

def conv2d_naive(x, weight, bias=None, stride: int = 1, pad: int = 0):
    """Convolution (cross-correlation, as in every deep-learning library) by plain loops.

    out[n, f, y, x] = bias[f] + sum_{c,i,j} weight[f, c, i, j] * padded[n, c, y*s + i, x*s + j]
    """
    n, c, h, w = x.shape
    f, _, kh, kw = weight.shape
    oh = conv_output_size(h, kh, stride, pad)
    ow = conv_output_size(w, kw, stride, pad)
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, f, oh, ow), dtype=x.dtype)
    for b in range(n):
        for o in range(f):
            for y in range(oh):
                for z in range(ow):
                    patch = padded[b, :, y * stride:y * stride + kh, z * stride:z * stride + kw]
                    out[b, o, y, z] = np.sum(patch * weight[o])
            if bias is not None:
                out[b, o] += bias[o]
    return out


def maxpool_naive(x, k: int = 2, stride: int = 2):
    """Max-pooling by plain loops: out[n, c, y, x] = max of the k x k window."""
    n, c, h, w = x.shape
    oh = conv_output_size(h, k, stride, 0)
    ow = conv_output_size(w, k, stride, 0)
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    for b in range(n):
        for ch in range(c):
            for y in range(oh):
                for z in range(ow):
                    out[b, ch, y, z] = x[b, ch, y * stride:y * stride + k,
                                         z * stride:z * stride + k].max()
    return out
