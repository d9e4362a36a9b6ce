"""A small network of our layers can fit 20 random images exactly."""

from __future__ import annotations

import numpy as np

from minivgg.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from minivgg.losses import SoftmaxCrossEntropy
from minivgg.models import Sequential


def test_small_network_reaches_100_percent_on_20_random_images():
    rng = np.random.default_rng(1)     # (seed 0 draws an unusually confident start)
    x = rng.standard_normal((20, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 20)
    model = Sequential(Conv2D(3, 16, rng=rng), ReLU(), MaxPool2D(),
                       Conv2D(16, 16, rng=rng), ReLU(), MaxPool2D(),
                       Flatten(), Dense(16 * 2 * 2, 10, rng=rng, std=0.1))
    loss_fn = SoftmaxCrossEntropy()
    velocity = [np.zeros_like(p.data) for p in model.parameters()]
    first = None
    for _ in range(300):
        loss = loss_fn.forward(model.forward(x, training=True), labels)
        first = loss if first is None else first
        model.backward(loss_fn.backward())
        for p, v in zip(model.parameters(), velocity):
            v *= 0.9
            v -= 0.05 * p.grad
            p.data += v
    accuracy = (model.forward(x, training=False).argmax(axis=1) == labels).mean()
    assert abs(first - np.log(10)) < 0.5
    assert accuracy == 1.0, f"training accuracy {accuracy:.2f}, final loss {loss:.4f}"
    assert loss < 0.05
