"""Parameters stay consistent with their gradients and optimizer state; model settings are
validated before anything is built; bad API arguments get errors that name what was wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minivgg.layers import BatchNorm2D, Conv2D, Dense, Parameter
from minivgg.models import VGGSettings, vgg
from minivgg.optim import SGD, Adam


def test_reassigning_data_keeps_grad_matching():
    layer = Dense(3, 2)
    layer.weight.data = layer.weight.data.astype(np.float64)
    assert layer.weight.grad.dtype == np.float64 and layer.weight.grad.shape == (3, 2)
    layer.weight.data = np.zeros((4, 2))
    assert layer.weight.grad.shape == (4, 2)
    with pytest.raises(ValueError, match=r"Dense.weight.grad: expected an array of shape"):
        layer.weight.grad = np.zeros((3, 2), np.float32)
    with pytest.raises(TypeError, match="expected an array, got list"):
        layer.weight.data = [1.0, 2.0]


def test_astype_casts_gradients_and_then_the_optimizer_state():
    """float32 -> float64 after a step: no gradient is silently rounded to float32."""
    layer = Dense(3, 2, rng=np.random.default_rng(0))
    opt = SGD(layer, lr=0.1, momentum=0.9)
    x = np.ones((2, 3), np.float32)
    layer.backward(layer.forward(x))
    opt.step()
    layer.astype(np.float64)
    assert all(p.grad.dtype == np.float64 for p in layer.parameters())
    layer.backward(layer.forward(x.astype(np.float64)))
    opt.step()
    assert all(b.dtype == np.float64 for b in opt.buffers["momentum"].values())
    assert layer.weight.data.dtype == np.float64


def test_optimizer_refuses_a_parameter_whose_shape_changed():
    layer = Dense(3, 2)
    opt = SGD(layer, lr=0.1, momentum=0.9)
    layer.backward(layer.forward(np.ones((1, 3), np.float32)))
    opt.step()
    layer.weight.data = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match=r"parameter weight now has shape \(5, 2\)"):
        opt.step()


@pytest.mark.parametrize("make", [lambda: SGD(Dense(2, 2), lr=float("nan")),
                                  lambda: SGD(Dense(2, 2), lr=math.inf),
                                  lambda: Adam(Dense(2, 2), lr=-1.0),
                                  lambda: SGD(Dense(2, 2), lr=0.1, weight_decay=float("nan"))])
def test_optimizers_refuse_non_finite_settings(make):
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        make()


def test_optimizer_load_state_dict_names_what_is_missing_and_changes_nothing():
    opt = SGD(Dense(2, 2), lr=0.1)
    with pytest.raises(ValueError, match="has no steps"):
        opt.load_state_dict({"lr": np.array(0.5)})
    with pytest.raises(ValueError, match="NaN or infinite"):
        opt.load_state_dict({"lr": np.array(0.5), "steps": np.array(3),
                             "momentum.weight": np.full((2, 2), np.nan)})
    assert opt.lr == 0.1 and opt.steps == 0


def test_load_state_dict_refuses_non_finite_and_complex_without_half_loading():
    model = vgg("A", 4, 32, "cifar", width=1 / 16, seed=0)
    before = model.state_dict()
    for bad in (np.nan, 1j):
        state = {k: v.copy() for k, v in before.items()}
        last = sorted(state)[-1]
        state[last] = state[last] + bad
        with pytest.raises(ValueError, match=last.replace(".", r"\.")):
            model.load_state_dict(state)
        after = model.state_dict()
        assert all(np.array_equal(after[k], before[k]) for k in before)


BAD_VGG = [
    (dict(config=None), TypeError, "expected a configuration name"),
    (dict(config=16), TypeError, "expected a configuration name"),
    (dict(config=[]), ValueError, "has no convolution"),
    (dict(config=[True, "M"]), ValueError, "bad configuration entry True"),
    (dict(config="Z"), ValueError, "unknown configuration 'Z'"),
    (dict(width=float("nan")), ValueError, "width must be a positive finite number"),
    (dict(width=math.inf), ValueError, "width must be a positive finite number"),
    (dict(width=0), ValueError, "width must be a positive finite number"),
    (dict(num_classes=0), ValueError, "num_classes must be a positive integer"),
    (dict(num_classes=-1), ValueError, "num_classes must be a positive integer"),
    (dict(num_classes=2.5), ValueError, "num_classes must be a positive integer"),
    (dict(input_size=32.0), ValueError, "input_size must be a positive integer"),
    (dict(in_channels=0), ValueError, "in_channels must be a positive integer"),
    (dict(seed=-1), ValueError, "seed must be a non-negative integer"),
    (dict(seed=1.5), ValueError, "seed must be a non-negative integer"),
    (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
    (dict(hidden=(0,)), ValueError, "hidden sizes must be positive integers"),
    (dict(head="tiny"), ValueError, "unknown head 'tiny'"),
    (dict(input_size=16), ValueError, "input_size 16 is too small"),
    (dict(dtype=np.int32), TypeError, "dtype must be a floating-point type"),
]


@pytest.mark.parametrize("kwargs,exc,message", BAD_VGG, ids=[str(k) for k, _, _ in BAD_VGG])
def test_vgg_refuses_bad_arguments_by_name(kwargs, exc, message):
    args = dict(config="A", num_classes=10, input_size=32, head="cifar", width=1 / 16)
    args.update(kwargs)
    with pytest.raises(exc, match=message):
        vgg(args.pop("config"), **args)


def test_settings_are_checked_before_any_layer_is_built():
    with pytest.raises(ValueError, match="width"):
        VGGSettings("E", width=float("nan"))


@pytest.mark.parametrize("make,message", [
    (lambda: Conv2D(3, 0), "Conv2D"),
    (lambda: Dense(0, 2), "Dense: in_features must be a positive integer"),
    (lambda: BatchNorm2D(0), "BatchNorm2D: num_features must be >= 1"),
])
def test_layers_refuse_empty_sizes(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_layers_refuse_an_empty_batch_and_a_bad_dtype():
    with pytest.raises(ValueError, match=r"Dense: expected at least one example"):
        Dense(2, 2).forward(np.zeros((0, 2), np.float32))
    with pytest.raises(TypeError, match="Dense: astype: expected a floating-point dtype"):
        Dense(2, 2).astype(np.int64)
    p = Parameter(np.zeros(3, np.float32))
    assert p.grad.shape == (3,) and p.grad.dtype == np.float32
