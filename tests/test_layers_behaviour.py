"""What layers promise besides their gradients: dtypes, masks, modes, parameters."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from minivgg.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, Parameter, ReLU


def _layers(dtype):
    return [
        (Conv2D(2, 3).astype(dtype), (2, 2, 5, 5)),
        (MaxPool2D(), (2, 2, 5, 5)),
        (ReLU(), (2, 2, 5, 5)),
        (Dense(4, 3).astype(dtype), (2, 4)),
        (Dropout(0.5, rng=np.random.default_rng(0)), (2, 4)),
        (Flatten(), (2, 2, 3, 3)),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_keep_dtype_and_leave_upstream_gradient_alone(rng, dtype):
    for layer, shape in _layers(dtype):
        x = rng.standard_normal(shape).astype(dtype)
        x_before = x.copy()
        y = layer.forward(x, training=True)
        assert y.dtype == dtype, type(layer).__name__
        dout = rng.standard_normal(y.shape).astype(dtype)
        dout_before = dout.copy()
        dx = layer.backward(dout)
        assert dx.dtype == dtype and dx.shape == x.shape, type(layer).__name__
        np.testing.assert_array_equal(dout, dout_before, err_msg=type(layer).__name__)
        np.testing.assert_array_equal(x, x_before, err_msg=type(layer).__name__)
        for p in layer.parameters():
            assert p.grad.dtype == dtype and p.grad.shape == p.data.shape


def test_dropout_training_with_a_fixed_mask(rng):
    x = rng.standard_normal((50, 40)) + 3.0
    layer = Dropout(0.25, rng=np.random.default_rng(7))
    y = layer.forward(x, training=True)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.75)       # inverted scaling
    assert abs(kept.mean() - 0.75) < 0.03                      # about 1 - p kept
    np.testing.assert_allclose(layer.backward(np.ones_like(x)), kept / 0.75)
    layer.freeze_mask()
    np.testing.assert_array_equal(layer.forward(x, training=True), y)  # same mask reused
    layer.freeze_mask(False)
    assert not np.array_equal(layer.forward(x, training=True), y)     # a fresh mask


def test_dropout_is_seeded_and_off_in_evaluation(rng):
    x = rng.standard_normal((10, 10))
    a = Dropout(0.5, rng=np.random.default_rng(3)).forward(x)
    b = Dropout(0.5, rng=np.random.default_rng(3)).forward(x)
    np.testing.assert_array_equal(a, b)
    assert Dropout(0.5).forward(x, training=False) is x


def test_dropout_keeps_the_expected_value():
    x = np.ones((200, 500))
    y = Dropout(0.5, rng=np.random.default_rng(0)).forward(x)
    assert abs(y.mean() - 1.0) < 0.01


def test_relu_values_and_mask():
    x = np.array([[-2.0, -0.5, 0.5, 2.0]])
    layer = ReLU()
    np.testing.assert_array_equal(layer.forward(x), [[0, 0, 0.5, 2.0]])
    np.testing.assert_array_equal(layer.backward(np.full_like(x, 3.0)), [[0, 0, 3.0, 3.0]])


def test_parameters_and_initialisation():
    conv = Conv2D(16, 32, rng=np.random.default_rng(0))
    assert conv.weight.shape == (32, 16, 3, 3) and conv.bias.shape == (32,)
    assert conv.weight.data.dtype == np.float32
    assert conv.weight.data.std() == pytest.approx(np.sqrt(2 / (32 * 9)), rel=0.05)  # He fan-out
    assert not conv.bias.data.any() and conv.bias.decay is False
    dense = Dense(300, 200, rng=np.random.default_rng(0))
    assert dense.weight.shape == (300, 200)
    assert dense.weight.data.std() == pytest.approx(0.01, rel=0.05)
    assert [type(p) for p in dense.parameters()] == [Parameter, Parameter]
    assert Conv2D(3, 4, bias=False).parameters()[0] is not None
    assert len(Conv2D(3, 4, bias=False).parameters()) == 1


def test_same_padding_keeps_the_size(rng):
    for k in (1, 3, 5):
        conv = Conv2D(2, 2, kernel_size=k, padding="same")
        assert conv.forward(rng.standard_normal((1, 2, 9, 9)).astype(np.float32)).shape == \
            (1, 2, 9, 9)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux's /proc")
def test_a_parameters_gradient_costs_no_memory_until_written():
    """Inference never writes .grad: its zeros must stay untouched pages (VGG-16: 553 MB)."""
    from minivgg.layers.base import Parameter

    def resident_mb():
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf(
            "SC_PAGE_SIZE") / 2**20

    data = np.ones((64, 1 << 20), dtype=np.float32)            # 256 MiB, resident
    before = resident_mb()
    p = Parameter(data)
    assert resident_mb() - before < 32, "the zero gradient was written at creation"
    assert not p.grad.any() and p.grad.shape == data.shape and p.grad.dtype == data.dtype


@pytest.mark.parametrize("cpu_kernels", ["numpy", "numba"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_relu_in_place_gives_the_same_values_in_the_input_memory(cpu_kernels, layout):
    """ReLU(inplace=True) writes y over x (NCHW views of NHWC memory included); values,
    mask and gradient equal the ReLU that leaves x alone."""
    from minivgg import backend
    saved = backend.get_cpu_kernels()
    backend.set_cpu_kernels(cpu_kernels)
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
        if layout == "nhwc":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        plain, in_place = ReLU(), ReLU(inplace=True)
        want = plain.forward(x)
        assert not np.shares_memory(want, x)
        x_before = x.copy()
        got = in_place.forward(x)
        assert np.shares_memory(got, x) and got.strides == x.strides
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(x, np.maximum(x_before, 0))      # x was overwritten
        dout = rng.standard_normal(x.shape).astype(np.float32)
        np.testing.assert_array_equal(in_place.backward(dout), plain.backward(dout))
        assert repr(in_place) == "ReLU(inplace=True)" and repr(plain) == "ReLU()"
    finally:
        backend.set_cpu_kernels(saved)


def test_vgg_relus_run_in_place_and_nothing_they_overwrite_is_read_again():
    """The models build their ReLUs in place: a training step's gradients equal those of the
    same network with ReLUs that copy (so no layer read an overwritten array)."""
    from minivgg.models import vgg
    kw = dict(head="cifar", width=0.125, batch_norm=True, hidden=(16,), dropout=0.0,
              seed=0, dtype=np.float64)
    a, b = vgg("A", 10, 32, **kw), vgg("A", 10, 32, **kw)
    relus = [layer for _, layer in b.named_layers() if isinstance(layer, ReLU)]
    assert relus and all(r.inplace for r in relus)
    for r in relus:
        r.inplace = False
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32))
    dout = np.random.default_rng(2).standard_normal((4, 10))
    for model in (a, b):
        model.forward(x, training=True)
        model.backward(dout)
    for (name, p), (_, q) in zip(a.named_parameters().items(), b.named_parameters().items()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)
