"""2-D convolution by im2col + one matrix product (GEMM); Winograd as the speed path."""

from __future__ import annotations

import numpy as np

from minivgg import kernels
from minivgg.kernels.winograd import applies as winograd_applies
from minivgg.layers.base import Layer, Parameter, he_normal


class Conv2D(Layer):
    """Convolution of an NCHW batch with F filters of size C x kh x kw.

    Shapes::

        x       (N, C, H, W)
        weight  (F, C, kh, kw)          bias (F,)
        y       (N, F, OH, OW)          OH = (H + 2 pad - kh) // stride + 1

    Forward, with ``cols = im2col(x)`` of shape (N*OH*OW, C*kh*kw) and ``Wm`` the weight
    flattened to (F, C*kh*kw)::

        Y = cols @ Wm.T + bias          (N*OH*OW, F), i.e. y in NHWC order

    Backward, with ``dY`` the upstream gradient in the same (N*OH*OW, F) layout::

        dWm   = dY.T @ cols             every filter sees every receptive field
        dbias = dY.sum(axis=0)
        dcols = dY @ Wm                 then dx = col2im(dcols): overlapping fields add up

    ``padding`` is an integer or "same" (keeps H and W at stride 1 for odd kernels).
    Weights start He-normal with fan-out F*kh*kw (as torchvision), biases at zero.

    ``input_grad = False`` skips ``dcols`` and ``col2im`` (a third of the layer's backward)
    and makes ``backward`` return None: right for the first layer of a network, whose input
    is the data and needs no gradient.

    Layout: ``Y`` is NHWC memory, returned as an NCHW *view* (no transpose is copied); the
    kernels read such views directly. Backward writes ``dcols`` into the cached ``cols``
    buffer, which is no longer needed once ``dWm`` is computed, and the next training
    forward writes its ``cols`` into the same buffer (fresh 38 MB arrays cost page faults).

    ``algorithm``: "im2col" (the above, for every convolution), "winograd" (F(2x2, 3x3),
    kernels/winograd.py: 2.25x fewer multiplications, for 3x3 stride-1 padding-1 only; NumPy
    arrays only), or "auto" (the default: Winograd where it applies on the Numba backend with
    >= 16 input channels, where it is measured faster; im2col elsewhere). Both agree to
    rounding; Winograd caches its transformed input tiles instead of ``cols``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int | str = 1, bias: bool = True,
                 rng: np.random.Generator | None = None, dtype=np.float32,
                 algorithm: str = "auto"):
        if padding == "same":
            if kernel_size % 2 == 0:
                raise ValueError(f"Conv2D: padding='same' needs an odd kernel_size, "
                                 f"got {kernel_size}")
            padding = kernel_size // 2
        if not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"Conv2D: padding must be a non-negative int or 'same', "
                             f"got {padding!r}")
        if stride < 1 or kernel_size < 1:
            raise ValueError(f"Conv2D: kernel_size and stride must be >= 1, "
                             f"got {kernel_size} and {stride}")
        if algorithm not in ("im2col", "winograd", "auto"):
            raise ValueError(f"Conv2D: algorithm must be 'im2col', 'winograd' or 'auto', "
                             f"got {algorithm!r}")
        if algorithm == "winograd" and not winograd_applies(kernel_size, stride, padding):
            raise ValueError(f"Conv2D: algorithm='winograd' needs kernel_size=3, stride=1, "
                             f"padding=1, got {kernel_size}, {stride}, {padding}")
        self.algorithm = algorithm
        rng = np.random.default_rng() if rng is None else rng
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, int(padding)
        k = kernel_size
        self.weight = Parameter(he_normal((out_channels, in_channels, k, k),
                                          fan=out_channels * k * k, rng=rng, dtype=dtype))
        self.bias = Parameter(np.zeros(out_channels, dtype=dtype), decay=False) if bias else None
        self.input_grad = True
        self.cache = None
        self._cols = None     # the im2col (or Winograd tile) buffer of the last step, reused

    def _buffer(self, x, shape):
        """The last step's buffer if it fits (and is free), else None (kernels allocate)."""
        buf = self._cols
        if (buf is None or buf.shape != shape or buf.dtype != x.dtype
                or type(buf) is not type(x) or self.cache is not None):
            return None
        return buf

    def uses_winograd(self, x) -> bool:
        """Whether forward(x) runs Winograd F(2x2, 3x3) rather than im2col."""
        if self.algorithm == "im2col" or not winograd_applies(self.kernel_size, self.stride,
                                                              self.padding):
            return False
        return self.algorithm == "winograd" or kernels.winograd_preferred(x)

    def output_shape(self, input_shape):
        """(C, H, W) -> (F, OH, OW), with the floor rule."""
        _, h, w = input_shape
        k, s, p = self.kernel_size, self.stride, self.padding
        return (self.out_channels, kernels.conv_output_size(h, k, s, p),
                kernels.conv_output_size(w, k, s, p))

    def forward(self, x, training=True):
        self._check_input(x, 4, "(N, C, H, W)")
        n, c, h, w = x.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        if c != self.in_channels:
            self._fail(f"expected {self.in_channels} input channels, got input of shape "
                       f"{tuple(x.shape)} with {c}")
        if h + 2 * p < k or w + 2 * p < k:
            self._fail(f"kernel {k}x{k} is larger than the padded input {h + 2 * p}x{w + 2 * p} "
                       f"(input {h}x{w}, padding {p})")
        self._check_dtype(x, self.weight.data)
        bias = None if self.bias is None else self.bias.data
        if self.uses_winograd(x):
            tiles = (16, n * ((h + 1) // 2) * ((w + 1) // 2), c)   # V (16, T, C)
            y, v = kernels.winograd_conv_forward(x, self.weight.data, bias,
                                                 out=self._buffer(x, tiles))
            if training:
                self.cache, self._cols = ("winograd", v, x.shape), v
            return y
        _, oh, ow = self.output_shape((c, h, w))
        rows = (n * oh * ow, c * k * k)
        cols = kernels.im2col(x, k, k, s, p, out=self._buffer(x, rows))  # (N*OH*OW, C*k*k)
        wm = self.weight.data.reshape(self.out_channels, -1)       # (F, C*k*k)
        y = kernels.matmul(cols, wm.T)                             # (N*OH*OW, F)
        if bias is not None:
            y += bias
        if training:
            self.cache = ("im2col", cols, x.shape)
            self._cols = cols
        # NHWC rows -> NCHW view: no copy here; the next layer reads it through strides
        return y.reshape(n, oh, ow, self.out_channels).transpose(0, 3, 1, 2)

    def backward(self, dout):
        algorithm, cols, x_shape = self._cached(self.cache)
        self.cache = None
        k, s, p, f = self.kernel_size, self.stride, self.padding, self.out_channels
        dy = dout.transpose(0, 2, 3, 1).reshape(-1, f)         # (N*OH*OW, F): free if NHWC
        if self.bias is not None:
            self.bias.grad[...] = dy.sum(axis=0)
        if algorithm == "winograd":                              # cols holds the tiles V
            dx, dw = kernels.winograd_conv_backward(dout, cols, self.weight.data, x_shape,
                                                    self.input_grad)
            self.weight.grad[...] = dw
            return dx
        wm = self.weight.data.reshape(f, -1)
        grad = self.weight.grad
        if grad.flags.c_contiguous:                              # dWm = dY.T @ cols, in place
            kernels.matmul(dy.T, cols, out=grad.reshape(f, -1))
        else:
            grad[...] = kernels.matmul(dy.T, cols).reshape(grad.shape)
        if not self.input_grad:
            return None
        dcols = kernels.matmul(dy, wm, out=cols if cols.flags.c_contiguous else None)
        return kernels.col2im(dcols, x_shape, k, k, s, p)

    def __repr__(self):
        algo = "" if self.algorithm == "auto" else f", algorithm={self.algorithm!r}"
        return (f"Conv2D({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{algo})")

