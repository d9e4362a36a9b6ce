"""2-D convolution by im2col + one matrix product (GEMM); Winograd as the speed path."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minivgg import kernels
from minivgg.backend import get_array_module
from minivgg.kernels.winograd import applies as winograd_applies
from minivgg.kernels.winograd import tile_grid, tile_size, tile_values
from minivgg.layers.base import Layer, Parameter, he_normal
from minivgg.modes import grad_enabled

ALGORITHMS = ("im2col", "winograd", "auto")


class _Cache(NamedTuple):
    """What backward needs: the algorithm, its buffer (cols or tiles), both shapes."""

    algorithm: str
    buffer: object          # im2col's cols (N*OH*OW, C*k*k), or Winograd's tiles V (a², T, C)
    x_shape: tuple
    y_shape: tuple          # the gradient backward accepts has this shape


def _as_rows(cols):
    """The memory of ``cols`` as a C-contiguous array of its shape, for dcols to be written
    over the columns once backward has used them: ``cols`` itself, or the memory of the
    transposed planes (``Conv2D._columns``) read as rows."""
    return cols if cols.flags.c_contiguous else cols.T.reshape(cols.shape)


def _positive_int(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Conv2D: {name} must be a positive integer, got {value!r}")
    return int(value)


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
    ``training`` changes nothing here: a convolution computes the same in both modes.

    ``input_grad = False`` skips ``dcols`` and ``col2im`` (a third of the layer's backward)
    and makes ``backward`` return None: right for the first layer of a network, whose input
    is the data and needs no gradient.

    Layout: ``Y`` is NHWC memory, returned as an NCHW *view* (no transpose is copied); the
    kernels read such views directly. ``cols`` lives in the layer's workspace
    (kernels/workspace.py): backward writes ``dcols`` over it, once ``dWm`` is computed, and
    the next forward writes its ``cols`` into the same memory (fresh arrays of tens of
    megabytes would cost page faults every step). Under ``no_grad()`` nothing is kept for
    backward, so every layer writes into one buffer of the thread's instead (inference
    then holds one column matrix, not one per layer).
    A batch whose column matrix would exceed the column budget (1 GiB by default,
    ``kernels.set_column_budget``) is convolved in chunks of images: forward keeps x
    instead of its columns, and backward rebuilds each chunk's columns from it. Winograd
    does the same in inference (under ``no_grad``: its tiles and output tiles per chunk);
    in training, a batch whose tiles exceed the budget is convolved by chunked im2col.

    ``algorithm``: "im2col" (the above, for every convolution), "winograd" (kernels/
    winograd.py: F(4x4, 3x3) with 4x fewer multiplications on maps of 3x3 and larger,
    F(2x2, 3x3) with 2.25x fewer on 2x2 maps; 3x3 stride-1 padding-1 only; NumPy arrays
    only), or "auto" (the default: Winograd where it applies with the Numba kernels
    and >= 16 input channels, where it is faster on the benchmark; im2col elsewhere). Both
    agree to rounding; Winograd keeps its transformed input tiles instead of ``cols``.
    With few input channels on Numba (``kernels.im2col_by_planes``: an RGB first layer)
    ``cols`` is written transposed and used as its transpose (``_columns``): the same
    matrix, in column-major memory.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int | str = 1, bias: bool = True,
                 rng: np.random.Generator | None = None, dtype=np.float32,
                 algorithm: str = "auto"):
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.kernel_size = k = _positive_int("kernel_size", kernel_size)
        self.stride = _positive_int("stride", stride)
        self.padding = self._padding(padding, k)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"Conv2D: algorithm must be 'im2col', 'winograd' or 'auto', "
                             f"got {algorithm!r}")
        if algorithm == "winograd" and not winograd_applies(k, self.stride, self.padding):
            raise ValueError(f"Conv2D: algorithm='winograd' needs kernel_size=3, stride=1, "
                             f"padding=1, got {k}, {self.stride}, {self.padding}")
        self.algorithm = algorithm
        rng = np.random.default_rng() if rng is None else rng
        f, c = self.out_channels, self.in_channels
        self.weight = Parameter(he_normal((f, c, k, k), fan=f * k * k, rng=rng, dtype=dtype),
                                name="Conv2D.weight")
        self.bias = (Parameter(np.zeros(f, dtype=dtype), decay=False, name="Conv2D.bias")
                     if bias else None)
        self.input_grad = True
        self.cache = None
        self._workspace = kernels.Workspace()     # cols (or tiles), reused step to step

    @staticmethod
    def _padding(padding, k) -> int:
        if padding == "same":
            if k % 2 == 0:
                raise ValueError(f"Conv2D: padding='same' needs an odd kernel_size, got {k}")
            return k // 2
        if not isinstance(padding, (int, np.integer)) or isinstance(padding, bool) \
                or padding < 0:
            raise ValueError(f"Conv2D: padding must be a non-negative int or 'same', "
                             f"got {padding!r}")
        return int(padding)

    def uses_winograd(self, x) -> bool:
        """Whether forward(x) runs Winograd (F(4x4, 3x3) or F(2x2, 3x3)) rather than im2col.

        Not in training when the batch's tiles would exceed the column budget: backward
        needs all of them, so such a batch takes chunked im2col, whose memory is bounded.
        """
        if self.algorithm == "im2col" or not winograd_applies(self.kernel_size, self.stride,
                                                              self.padding):
            return False
        if grad_enabled() and x.shape[0] * self._winograd_bytes_per_image(x) \
                > kernels.column_budget():
            return False
        return self.algorithm == "winograd" or kernels.winograd_preferred(x)

    def _winograd_bytes_per_image(self, x) -> int:
        """Winograd's input and output tiles (V and M) for one image."""
        h, w = x.shape[2:]
        values = tile_values(h, w, tile_size(h, w))
        return values * (x.shape[1] + self.out_channels) * x.dtype.itemsize

    def output_shape(self, input_shape):
        """(C, H, W) -> (F, OH, OW), with the floor rule."""
        _, h, w = input_shape
        k, s, p = self.kernel_size, self.stride, self.padding
        return (self.out_channels, kernels.conv_output_size(h, k, s, p),
                kernels.conv_output_size(w, k, s, p))

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x, training=None):
        self._check_forward_input(x)
        if self.uses_winograd(x):
            y, cache = self._forward_winograd(x)
        else:
            y, cache = self._forward_im2col(x)
        self._keep(cache)
        return y

    def _check_forward_input(self, x):
        self._check_input(x, 4, "(N, C, H, W)")
        _, c, h, w = x.shape
        k, p = self.kernel_size, self.padding
        if c != self.in_channels:
            self._fail(f"expected {self.in_channels} input channels, got input of shape "
                       f"{tuple(x.shape)} with {c}")
        if h + 2 * p < k or w + 2 * p < k:
            self._fail(f"kernel {k}x{k} is larger than the padded input {h + 2 * p}x{w + 2 * p} "
                       f"(input {h}x{w}, padding {p})")
        self._check_dtype(x, self.weight.data)

    def _buffer(self, key, shape, x, shared=False):
        """The scratch buffer for ``key``: this layer's own while gradients are on (backward
        reads it), else (or if ``shared``) the thread's, shared by every layer (nothing
        outlives the call)."""
        own = grad_enabled() and not shared
        workspace = self._workspace if own else kernels.thread_workspace()
        return workspace.buffer(f"conv2d-{key}", shape, x.dtype, get_array_module(x))

    def images_per_chunk(self, x) -> int:
        """Images of ``x`` whose im2col matrix fits the column budget (kernels/workspace.py)."""
        n, c = x.shape[:2]
        _, oh, ow = self.output_shape(x.shape[1:])
        per_image = oh * ow * c * self.kernel_size ** 2 * x.dtype.itemsize
        return kernels.images_per_chunk(n, per_image, inference=not grad_enabled())

    def _forward_im2col(self, x):
        """Y = im2col(x) @ Wm.T + bias, returned as the NCHW view of the NHWC rows.

        A batch whose column matrix exceeds the budget is done ``images_per_chunk`` images
        at a time, each chunk's rows into its block of Y; backward then rebuilds each
        chunk's columns from x (kept instead of them), so memory stays bounded in training
        too, for the price of a second im2col.
        """
        n, f = x.shape[0], self.out_channels
        _, oh, ow = self.output_shape(x.shape[1:])
        wm = self.weight.data.reshape(f, -1).T
        bias = None if self.bias is None else self.bias.data       # added to every row
        chunk = self.images_per_chunk(x)
        if chunk >= n:
            cols = self._columns(x)
            y = kernels.matmul(cols, wm, bias=bias)                      # (N*OH*OW, F)
            cache = ("im2col", cols)
        else:
            y = get_array_module(x).empty((n * oh * ow, f), dtype=x.dtype)
            for start, part in self._chunks(x, chunk):
                cols = self._chunk_columns(part)
                kernels.matmul(cols, wm, bias=bias,
                               out=y[start * oh * ow:(start + len(part)) * oh * ow])
            cache = ("im2col-chunked", x)
        y = y.reshape(n, oh, ow, f).transpose(0, 3, 1, 2)   # a view: the next layer reads it
        return y, _Cache(*cache, tuple(x.shape), tuple(y.shape))

    @staticmethod
    def _chunks(x, chunk):
        """(first image, x[first:first + chunk]) for each chunk of the batch."""
        return [(i, x[i:i + chunk]) for i in range(0, x.shape[0], chunk)]

    def _chunk_columns(self, part):
        """im2col of one chunk, into the thread's scratch: chunks keep nothing between calls,
        so every layer shares one budget-sized buffer, in training as in inference."""
        return self._columns(part, shared=True)

    def _columns(self, x, shared=False):
        """im2col(x), (N*OH*OW, C*k*k), in the column buffer (``_buffer``).

        With few input channels on the Numba kernels (``kernels.im2col_by_planes``: the RGB
        first layer) the matrix is written transposed, one shifted input plane per row
        (``kernels.im2col_planes``), and returned as the transpose of that: the same
        matrix in column-major memory, which the GEMMs read as they read rows.
        """
        n, c = x.shape[:2]
        k, s, p = self.kernel_size, self.stride, self.padding
        _, oh, ow = self.output_shape(x.shape[1:])
        shape = (n * oh * ow, c * k * k)
        buffer = self._buffer("cols", shape, x, shared)
        if kernels.im2col_by_planes(x):
            return kernels.im2col_planes(x, k, k, s, p, out=buffer.reshape(shape[::-1])).T
        return kernels.im2col(x, k, k, s, p, out=buffer)

    def _forward_winograd(self, x):
        """y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A for every tile (kernels/winograd.py)."""
        n, c, h, w = x.shape
        m = tile_size(h, w)                     # F(4x4, 3x3) on most maps, else F(2x2, 3x3)
        th, tw = tile_grid(h, w, m)
        bias = None if self.bias is None else self.bias.data
        per_image = self._winograd_bytes_per_image(x)
        chunk = n if grad_enabled() else kernels.images_per_chunk(n, per_image, inference=True)
        if chunk >= n:
            tiles = self._buffer("tiles", ((m + 2) ** 2, n * th * tw, c), x)
            y, v = kernels.winograd_conv_forward(x, self.weight.data, bias, out=tiles, tile=m)
            return y, _Cache("winograd", v, tuple(x.shape), tuple(y.shape))
        # Inference keeps no tiles for backward, so a batch whose input and output tiles
        # exceed the column budget is transformed a chunk of images at a time.
        y = np.empty((n, h, w, self.out_channels), dtype=x.dtype).transpose(0, 3, 1, 2)
        for start, part in self._chunks(x, chunk):
            tiles = self._buffer("tiles", ((m + 2) ** 2, len(part) * th * tw, c), x)
            y[start:start + len(part)], _ = kernels.winograd_conv_forward(
                part, self.weight.data, bias, out=tiles, tile=m)
        return y, None

    # -- backward --------------------------------------------------------------------------
    def backward(self, dout):
        cache = self._cached(self.cache)
        self._check_grad(dout, cache.y_shape)
        if dout.dtype != self.weight.data.dtype:
            self._fail(f"backward: expected a gradient of dtype {self.weight.data.dtype} (the "
                       f"dtype forward returned), got {dout.dtype}", TypeError)
        self.cache = None
        dy = dout.transpose(0, 2, 3, 1).reshape(-1, self.out_channels)  # free if NHWC memory
        if self.bias is not None:
            self.bias.grad[...] = kernels.channel_sums(dy)                # dbias = dY summed
        if cache.algorithm == "winograd":
            return self._backward_winograd(dout, cache)
        if cache.algorithm == "im2col-chunked":
            return self._backward_chunked(dy, cache)
        return self._backward_im2col(dy, cache)

    def _backward_chunked(self, dy, cache):
        """The same as _backward_im2col, one chunk of the batch at a time: each chunk's
        columns rebuilt from x, dWm summed over the chunks, dx written chunk by chunk."""
        x, f = cache.buffer, self.out_channels
        k, s, p = self.kernel_size, self.stride, self.padding
        wm = self.weight.data.reshape(f, -1)
        rows = dy.shape[0] // x.shape[0]                 # OH * OW per image
        dwm = get_array_module(x).zeros(wm.shape, dtype=x.dtype)
        dx = None
        if self.input_grad:
            n, c, h, w = x.shape
            dx = get_array_module(x).empty((n, h, w, c), dtype=x.dtype).transpose(0, 3, 1, 2)
        for start, part in self._chunks(x, self.images_per_chunk(x)):
            cols = self._chunk_columns(part)
            dy_part = dy[start * rows:(start + len(part)) * rows]
            dwm += kernels.matmul(dy_part.T, cols)
            if dx is not None:
                dcols = kernels.matmul(dy_part, wm, out=_as_rows(cols))
                dx[start:start + len(part)] = kernels.col2im(dcols, part.shape, k, k, s, p)
        self.weight.grad[...] = dwm.reshape(self.weight.grad.shape)
        return dx

    def _backward_im2col(self, dy, cache):
        """dWm = dY.T @ cols (into .grad), then dx = col2im(dY @ Wm) (dcols over cols)."""
        k, s, p, f = self.kernel_size, self.stride, self.padding, self.out_channels
        cols, grad = cache.buffer, self.weight.grad
        if grad.flags.c_contiguous:
            kernels.matmul(dy.T, cols, out=grad.reshape(f, -1))          # in place
        else:
            grad[...] = kernels.matmul(dy.T, cols).reshape(grad.shape)
        if not self.input_grad:
            return None
        dcols = kernels.matmul(dy, self.weight.data.reshape(f, -1), out=_as_rows(cols))
        return kernels.col2im(dcols, cache.x_shape, k, k, s, p)

    def _backward_winograd(self, dout, cache):
        """dW = Gᵀ (Vᵀ dM) G and dx from dM = A dY Aᵀ (kernels/winograd.py)."""
        dx, dw = kernels.winograd_conv_backward(dout, cache.buffer, self.weight.data,
                                                cache.x_shape, self.input_grad)
        self.weight.grad[...] = dw
        return dx

    def to(self, device: str):
        self._workspace.clear()             # buffers on the old device are of no more use
        return super().to(device)

    def __repr__(self):
        algo = "" if self.algorithm == "auto" else f", algorithm={self.algorithm!r}"
        return (f"Conv2D({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{algo})")
