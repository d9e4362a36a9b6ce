"""Softmax cross-entropy: value, stability, gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minivgg.losses import SoftmaxCrossEntropy


@pytest.mark.parametrize("classes", [2, 10, 1000])
def test_uniform_logits_give_ln_classes(classes):
    loss = SoftmaxCrossEntropy().forward(np.zeros((5, classes)), np.arange(5) % classes)
    assert loss == pytest.approx(math.log(classes), rel=1e-12)


def test_huge_logits_stay_finite():
    loss = SoftmaxCrossEntropy()
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]])
    value = loss.forward(logits, np.array([0, 0]))
    assert np.isfinite(value) and value == pytest.approx(2e4 / 2)
    assert np.all(np.isfinite(loss.backward()))


def test_gradient_against_finite_differences(rng):
    logits, labels = rng.standard_normal((4, 6)), np.array([0, 5, 2, 2])
    loss = SoftmaxCrossEntropy()
    loss.forward(logits, labels)
    analytic = loss.backward()
    numeric = np.zeros_like(logits)
    eps = 1e-6
    for i in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[i] += eps
        down[i] -= eps
        numeric[i] = (loss.forward(up, labels) - loss.forward(down, labels)) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-10)


def test_gradient_is_mean_over_the_batch(rng):
    loss = SoftmaxCrossEntropy()
    loss.forward(rng.standard_normal((8, 3)), rng.integers(0, 3, 8))
    grad = loss.backward()
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-15)  # p - onehot sums to 0
    assert np.abs(grad).max() <= 1 / 8


def test_float32_stays_float32(rng):
    loss = SoftmaxCrossEntropy()
    loss.forward(rng.standard_normal((3, 4)).astype(np.float32), np.array([0, 1, 2]))
    assert loss.backward().dtype == np.float32
