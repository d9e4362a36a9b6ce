"""The gradient checker must catch wrong backward passes: it cannot pass vacuously."""

from __future__ import annotations

import numpy as np
import pytest

from minivgg.gradcheck import check_layer, check_model
from minivgg.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from minivgg.models import Sequential


class FlippedKernelConv(Conv2D):
    """dx computed with the kernel rotated by 180 degrees (true convolution, not correlation)."""

    def backward(self, dout):
        w = self.weight.data
        self.weight.data = np.ascontiguousarray(w[:, :, ::-1, ::-1])
        try:
            return super().backward(dout)
        finally:
            self.weight.data = w


class TransposedKernelConv(Conv2D):
    """dx computed with each kernel transposed (kh and kw swapped)."""

    def backward(self, dout):
        w = self.weight.data
        self.weight.data = np.ascontiguousarray(w.transpose(0, 1, 3, 2))
        try:
            return super().backward(dout)
        finally:
            self.weight.data = w


class SlightlyWrongWeightGradConv(Conv2D):
    """A weight gradient off by one part in ten thousand."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.weight.grad *= 1.0001
        return dx


class WrongElementPool(MaxPool2D):
    """Routes each gradient to the neighbour of the maximum instead of the maximum."""

    def backward(self, dout):
        return np.roll(super().backward(dout), 1, axis=3)


class LeakyBackwardReLU(ReLU):
    """Forgets the mask: lets every gradient through."""

    def backward(self, dout):
        super().backward(dout)
        return dout.copy()


class UntransposedDense(Dense):
    """dx = dout @ W instead of dout @ W.T (shapes agree only for a square W)."""

    def backward(self, dout):
        super().backward(dout)
        return dout @ self.weight.data


class UnscaledDropout(Dropout):
    """Forgets the 1 / (1 - p) scale in backward."""

    def backward(self, dout):
        return super().backward(dout) * (1 - self.p)


class MutatingReLU(ReLU):
    """Computes the right gradient but overwrites the upstream gradient it was given."""

    def backward(self, dout):
        mask = self._cached(self.cache)
        self.cache = None
        dout *= mask
        return dout


def _f64(layer, rng):
    layer.astype(np.float64)
    if getattr(layer, "bias", None) is not None:
        layer.bias.data[:] = rng.standard_normal(layer.bias.data.shape)
    return layer


@pytest.mark.parametrize("cls", [FlippedKernelConv, TransposedKernelConv])
def test_wrong_conv_kernel_orientation_is_caught(rng, cls):
    layer = _f64(cls(2, 3, kernel_size=3, padding=1, rng=rng), rng)
    with pytest.raises(AssertionError, match=r"tensor 'input', flat index \d+"):
        check_layer(layer, rng.standard_normal((2, 2, 5, 5)))


def test_tiny_weight_gradient_error_is_caught(rng):
    layer = _f64(SlightlyWrongWeightGradConv(2, 3, rng=rng), rng)
    with pytest.raises(AssertionError, match="tensor 'weight'.*relative error"):
        check_layer(layer, rng.standard_normal((2, 2, 5, 5)))


def test_pool_routing_to_wrong_element_is_caught(rng):
    x = (rng.permutation(2 * 2 * 6 * 6) * 0.1).reshape(2, 2, 6, 6)
    with pytest.raises(AssertionError, match="tensor 'input'"):
        check_layer(WrongElementPool(2, 2), x)


def test_relu_without_mask_is_caught(rng):
    x = rng.standard_normal((4, 5))
    x = np.where(x >= 0, x + 0.05, x - 0.05)
    with pytest.raises(AssertionError, match="tensor 'input'"):
        check_layer(LeakyBackwardReLU(), x)


def test_untransposed_dense_is_caught(rng):
    layer = _f64(UntransposedDense(4, 4, rng=rng, std=1.0), rng)
    with pytest.raises(AssertionError, match="tensor 'input'"):
        check_layer(layer, rng.standard_normal((3, 4)))


def test_unscaled_dropout_is_caught(rng):
    with pytest.raises(AssertionError, match="tensor 'input'"):
        check_layer(UnscaledDropout(0.5, rng=np.random.default_rng(0)),
                    rng.standard_normal((4, 6)))


def test_layer_that_mutates_its_upstream_gradient_is_caught(rng):
    x = np.array([[1.0, -2.0, 0.5], [-0.5, 3.0, -1.0]])
    with pytest.raises(AssertionError, match="modified the upstream gradient"):
        check_layer(MutatingReLU(), x)


def test_one_wrong_layer_inside_a_model_is_caught(rng):
    model = Sequential(Conv2D(2, 3, rng=rng), ReLU(), WrongElementPool(), Flatten(),
                       Dense(3 * 3 * 3, 4, rng=rng)).astype(np.float64)
    x = rng.standard_normal((2, 2, 6, 6))
    with pytest.raises(AssertionError, match="gradient check failed for Sequential"):
        check_model(model, x, np.array([0, 3]), tol=1e-5)


class BiasGradConv(Conv2D):
    """Reports a bias gradient (the plain sum of dY) although batch norm follows it."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.bias.grad[...] = 1e-3 * np.arange(1, self.out_channels + 1)
        return dx


def test_vanishing_gradients_are_exempt_only_when_both_sides_vanish(rng):
    """In front of batch norm a conv bias has zero gradient: check_model lets it pass as
    'zero'. A backward that reports a gradient there (or anywhere it should not) still fails."""
    from minivgg.layers import BatchNorm2D
    x = rng.standard_normal((3, 2, 5, 5))
    labels = np.array([0, 3, 1])

    def model(conv_cls):
        return Sequential(conv_cls(2, 3, rng=np.random.default_rng(0)), BatchNorm2D(3), ReLU(),
                          Flatten(), Dense(3 * 5 * 5, 4, rng=rng, std=0.3)).astype(np.float64)

    errors = check_model(model(Conv2D), x, labels)
    assert errors.zero == ("0.bias",) and "0.bias" not in errors and max(errors.values()) < 1e-6
    with pytest.raises(AssertionError, match="tensor '0.bias'"):
        check_model(model(BiasGradConv), x, labels)


def test_correct_layers_pass_the_same_checks(rng):
    """The control group: the unmutated layers pass the exact checks used above."""
    check_layer(_f64(Conv2D(2, 3, rng=rng), rng), rng.standard_normal((2, 2, 5, 5)))
    check_layer(MaxPool2D(2, 2), (rng.permutation(2 * 2 * 6 * 6) * 0.1).reshape(2, 2, 6, 6))
    check_layer(_f64(Dense(4, 4, rng=rng, std=1.0), rng), rng.standard_normal((3, 4)))


def test_a_fused_relu_left_out_of_batch_norms_backward_is_caught(rng, monkeypatch):
    """Sequential(BatchNorm2D, ReLU) on Numba runs as one fused pass; a backward that
    forgets the ReLU's mask (relu=False) must fail the check, the correct one pass."""
    from minivgg import backend, kernels
    from minivgg.layers import BatchNorm2D
    monkeypatch.setattr(backend, "_cpu_kernels", "numba")
    bn = BatchNorm2D(3).astype(np.float64)
    bn.beta.data[:] = [0.3, -0.4, 0.2]
    model = Sequential(bn, ReLU())
    x = rng.standard_normal((4, 3, 3, 3))
    check_layer(model, x)
    assert model._fused == {1}
    correct = kernels.batchnorm_backward

    def forgets_the_relu(*args, **kwargs):
        return correct(*args, **{**kwargs, "relu": False})

    monkeypatch.setattr(kernels, "batchnorm_backward", forgets_the_relu)
    with pytest.raises(AssertionError, match="gradient check failed for Sequential"):
        check_layer(model, x)
