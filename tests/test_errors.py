"""Bad input gets an error that names the layer, what it got and what it expected."""

from __future__ import annotations

import numpy as np
import pytest

import minivgg as mv
from minivgg.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from minivgg.losses import SoftmaxCrossEntropy


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"Conv2D: expected a 4-D input .*got shape \(3, 8, 8\)"):
        Conv2D(3, 4).forward(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2D: expected a 4-D input .*got shape \(2, 8\)"):
        MaxPool2D().forward(np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match=r"Dense: expected a 2-D input .*got shape"):
        Dense(4, 2).forward(np.zeros((2, 2, 2), np.float32))


def test_wrong_channel_count():
    with pytest.raises(ValueError, match=r"Conv2D: expected 3 input channels, got .*with 1"):
        Conv2D(3, 4).forward(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"Dense: expected 10 input features, got .* with 12"):
        Dense(10, 2).forward(np.zeros((2, 12), np.float32))


def test_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match=r"Conv2D: kernel 5x5 is larger than the padded input 3x3"):
        Conv2D(1, 1, kernel_size=5, padding=0).forward(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2D: window 2x2 is larger than the input 1x1"):
        MaxPool2D().forward(np.zeros((1, 1, 1, 1), np.float32))


def test_labels_out_of_range():
    loss = SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: labels must be in \[0, 3\), "
                                         r"got values from 0 to 3"):
        loss.forward(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"expected labels of shape \(2,\)"):
        loss.forward(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="integer labels"):
        loss.forward(np.zeros((2, 3)), np.array([0.0, 1.0]))


@pytest.mark.parametrize("layer,shape", [
    (Conv2D(1, 1), (1, 1, 4, 4)), (MaxPool2D(), (1, 1, 4, 4)), (ReLU(), (2, 3)),
    (Dense(3, 2), (2, 3)), (Dropout(0.5), (2, 3)), (Flatten(), (2, 3, 1)),
])
def test_backward_before_forward(layer, shape):
    name = type(layer).__name__
    with pytest.raises(RuntimeError, match=rf"{name}: backward\(\) called before forward"):
        layer.backward(np.zeros(shape, np.float32))
    with pytest.raises(RuntimeError, match="SoftmaxCrossEntropy: backward"):
        SoftmaxCrossEntropy().backward()


def test_forward_under_no_grad_keeps_no_cache():
    layer = Conv2D(1, 1)
    with mv.no_grad():
        layer.forward(np.zeros((1, 1, 4, 4), np.float32), training=False)
    assert layer.cache is None
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((1, 1, 4, 4), np.float32))


def test_dtype_mismatch_and_non_float_input():
    with pytest.raises(TypeError, match=r"Conv2D: input dtype float64 does not match .*float32"):
        Conv2D(1, 1).forward(np.zeros((1, 1, 4, 4)))
    with pytest.raises(TypeError, match=r"Dense: expected a floating-point input, got dtype uint8"):
        Dense(2, 2).forward(np.zeros((1, 2), np.uint8))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="Conv2D: padding='same' needs an odd kernel_size"):
        Conv2D(1, 1, kernel_size=2, padding="same")
    with pytest.raises(ValueError, match=r"Dropout: p must be in \[0, 1\), got 1.0"):
        Dropout(1.0)
