"""Kernel dispatch: one public function per kernel, the implementation picked per call.

A CuPy array always goes to the CUDA kernels (gpu.py). A NumPy array goes to the Numba
kernels (cpu.py) when the backend is "numba", else to the NumPy reference (reference.py).
Layers call only these functions, so they never need to know which backend is active.

Every implementation takes and returns *logically* NCHW arrays with the reference's
shapes, dtypes and values; the fast ones may return NCHW views of NHWC memory (layout.py).
"""

from __future__ import annotations

from minivgg.backend import get_backend
from minivgg.kernels import reference
from minivgg.kernels.reference import conv_output_size

__all__ = ["im2col", "col2im", "maxpool_forward", "maxpool_backward", "relu_forward",
           "relu_backward", "matmul", "conv_output_size", "implementation", "winograd_conv_forward",
           "winograd_conv_backward", "winograd_preferred"]


def implementation(x):
    """The kernel module that handles array ``x`` under the active backend."""
    if type(x).__module__.startswith("cupy"):
        from minivgg.kernels import gpu
        return gpu
    if get_backend() == "numba":
        from minivgg.kernels import cpu
        return cpu
    return reference


def im2col(x, kh, kw, stride=1, pad=0, out=None):
    return implementation(x).im2col(x, kh, kw, stride, pad, out=out)


def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
    return implementation(cols).col2im(cols, x_shape, kh, kw, stride, pad)


def maxpool_forward(x, k=2, stride=2):
    return implementation(x).maxpool_forward(x, k, stride)


def maxpool_backward(dout, argmax, x_shape, k=2, stride=2):
    return implementation(dout).maxpool_backward(dout, argmax, x_shape, k, stride)


def matmul(a, b, out=None):
    return implementation(a).matmul(a, b, out=out)


def relu_forward(x):
    return implementation(x).relu_forward(x)


def relu_backward(dout, mask):
    return implementation(dout).relu_backward(dout, mask)


# -- Winograd F(2x2, 3x3) convolution (winograd.py): NumPy arrays only -----------------------

def _winograd(x):
    impl = implementation(x)
    if impl is reference:
        from minivgg.kernels import winograd
        return winograd
    if impl.__name__.endswith(".cpu"):
        from minivgg.kernels import winograd_cpu
        return winograd_cpu
    raise NotImplementedError(f"Winograd convolution: implemented for NumPy arrays (backends "
                              f"'numpy' and 'numba'), got a {type(x).__module__} array; "
                              f"use Conv2D(algorithm='im2col') on the GPU")


WINOGRAD_MIN_CHANNELS = 16


def winograd_preferred(x) -> bool:
    """What Conv2D(algorithm="auto") picks for ``x`` where Winograd applies (3x3, s1, p1).

    True on the Numba backend for inputs of at least 16 channels: measured faster there
    (benchmarks/results/). With 3 channels (a network's first layer) the GEMM is too small
    for the savings to pay for the transforms and im2col stays faster. The NumPy backend
    stays the readable im2col specification; CuPy has no Winograd kernels.
    """
    return (implementation(x).__name__.endswith(".cpu")
            and x.shape[1] >= WINOGRAD_MIN_CHANNELS)


def winograd_conv_forward(x, w, bias=None, out=None):
    return _winograd(x).winograd_conv_forward(x, w, bias, out=out)


def winograd_conv_backward(dout, v, w, x_shape, input_grad=True):
    return _winograd(dout).winograd_conv_backward(dout, v, w, x_shape, input_grad)
