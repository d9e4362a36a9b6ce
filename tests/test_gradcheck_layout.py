"""gradcheck on a real NHWC view: the layer is handed the layout it was given, and the
finite differences perturb that memory in place (gradcheck.py)."""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels import KERNEL_BACKENDS, kernel_module

import minivgg as mv
from minivgg import backend
from minivgg.gradcheck import check_layer
from minivgg.layers import BatchNorm2D, Conv2D, Layer, MaxPool2D, ReLU
from minivgg.models.sequential import Sequential


@pytest.fixture(autouse=True)
def _restore_backend():
    saved = backend._cpu_kernels, backend._device
    yield
    backend._cpu_kernels, backend._device = saved


class Spy(Layer):
    """The identity, recording the strides of every input it sees."""

    def __init__(self):
        self.seen = []
        self.cache = None

    def forward(self, x, training=None):
        self.seen.append(tuple(x.strides))
        return x

    def backward(self, dout):
        return dout

    def output_shape(self, input_shape):
        return input_shape


class TripleWrongly(Spy):
    """y = 3x with the backward of y = 2x: a planted bug."""

    def forward(self, x, training=None):
        super().forward(x, training)
        return 3 * x

    def backward(self, dout):
        return 2 * dout


def nhwc(rng, shape):
    n, c, h, w = shape
    return np.ascontiguousarray(rng.standard_normal((n, h, w, c))).transpose(0, 3, 1, 2)


def test_the_layer_sees_the_nhwc_view_it_was_given(rng):
    x = nhwc(rng, (2, 3, 4, 5))
    spy = Spy()
    check_layer(spy, x)
    assert set(spy.seen) == {x.strides}                 # every forward, perturbed or not
    with pytest.raises(AssertionError, match="gradient check failed for TripleWrongly"):
        check_layer(TripleWrongly(), x)                 # and a wrong backward still fails


@pytest.mark.parametrize("name", ["numpy", *KERNEL_BACKENDS])
def test_conv_block_gradients_on_an_nhwc_view(name, rng):
    """Conv -> BN -> ReLU -> pool, fed NHWC memory (what the previous block hands on)."""
    if name == "numpy":
        mv.set_backend("numpy")
        to_dev = np.asarray
    else:
        _, to_dev, _ = kernel_module(name)
        mv.set_backend("numba" if name == "numba" else "cupy")
    spy = Spy()
    conv = Conv2D(3, 4, rng=rng, algorithm="im2col", bias=False)   # a bias before BN has
    block = Sequential(spy, conv, BatchNorm2D(4), ReLU(),           # zero gradient: noise
                       MaxPool2D(2, 2)).astype(np.float64)
    if name == "cupy":
        block.to("gpu")
    x = to_dev(nhwc(rng, (2, 3, 6, 6)))
    errors = check_layer(block, x, tol=1e-6, max_entries=40)
    assert max(errors.values()) < 1e-6
    assert set(spy.seen) == {tuple(x.strides)}
