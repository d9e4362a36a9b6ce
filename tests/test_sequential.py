"""Sequential: order of forward/backward, nested names, state_dict, training flag, errors."""

from __future__ import annotations

import numpy as np
import pytest

from minivgg.gradcheck import check_layer
from minivgg.layers import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from minivgg.models import Sequential
from minivgg.summary import Summary


def small_net(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    # no conv bias before batch norm: BN removes it, its gradient is exactly zero
    features = Sequential(Conv2D(2, 3, bias=False, rng=rng), BatchNorm2D(3), ReLU(), MaxPool2D())
    classifier = Sequential(Dense(3 * 2 * 2, 5, rng=rng), ReLU(), Dropout(0.5, rng=rng),
                            Dense(5, 4, rng=rng))
    model = Sequential(("features", features), ("flatten", Flatten()),
                       ("classifier", classifier))
    return model.astype(dtype)


def test_forward_and_backward_compose_the_layers_in_order(rng):
    a, b = Dense(4, 3, rng=rng).astype(np.float64), Dense(3, 2, rng=rng).astype(np.float64)
    relu = ReLU()
    model = Sequential(a, relu, b)
    x = rng.standard_normal((5, 4))
    y = model.forward(x)
    np.testing.assert_allclose(y, np.maximum(x @ a.weight.data, 0) @ b.weight.data)
    g = rng.standard_normal(y.shape)
    dx = model.backward(g)
    mask = (x @ a.weight.data) > 0
    np.testing.assert_allclose(dx, ((g @ b.weight.data.T) * mask) @ a.weight.data.T)
    np.testing.assert_allclose(b.weight.grad, np.maximum(x @ a.weight.data, 0).T @ g)


def test_nested_model_gradients(rng):
    model = small_net()
    errors = check_layer(model, rng.standard_normal((3, 2, 4, 4)), tol=1e-7)
    assert "features.0.weight" in errors and "classifier.3.bias" in errors


def test_nested_names_and_lookup():
    model = small_net()
    assert list(model.named_parameters()) == [
        "features.0.weight", "features.1.gamma", "features.1.beta",
        "classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"]
    assert list(model.named_buffers()) == ["features.1.running_mean", "features.1.running_var"]
    assert isinstance(model["features"][1], BatchNorm2D) and len(model) == 3
    assert [type(layer).__name__ for layer in model["classifier"]] == ["Dense", "ReLU",
                                                                      "Dropout", "Dense"]
    assert model.output_shape((2, 4, 4)) == (4,)
    assert model.num_parameters() == 54 + (3 + 3) + (12 * 5 + 5) + (5 * 4 + 4)


def test_training_flag_reaches_nested_layers(rng):
    model = small_net()
    x = rng.standard_normal((4, 2, 4, 4))
    bn = model["features"][1]
    assert np.array_equal(model.forward(x, training=False), model.forward(x, training=False))
    np.testing.assert_array_equal(bn.running_mean, 0)        # evaluation: no update
    model.forward(x, training=True)
    assert np.all(bn.running_mean != 0)                        # training: batch statistics
    drop = model["classifier"][2]
    h = np.ones((8, 5))
    assert np.array_equal(drop.forward(h, training=False), h)
    outs = {tuple(model.forward(x, training=True).ravel().round(12)) for _ in range(4)}
    assert len(outs) > 1                                       # dropout draws new masks


def test_state_dict_round_trip_copies_and_loads_in_place(rng):
    src, dst = small_net(seed=1), small_net(seed=2)
    x = rng.standard_normal((4, 2, 4, 4))
    src.forward(x, training=True)                              # non-trivial running stats
    state = src.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    state["features.0.weight"] += 1.0                          # a copy: the model is unchanged
    assert not np.array_equal(state["features.0.weight"], src["features"][0].weight.data)
    state = src.state_dict()
    weight_array = dst["features"][0].weight.data
    dst.load_state_dict(state)
    assert dst["features"][0].weight.data is weight_array      # same array, filled in place
    np.testing.assert_array_equal(dst.forward(x, training=False), src.forward(x, training=False))
    dst32 = small_net(seed=3, dtype=np.float32)
    dst32.load_state_dict(state)                               # float64 state, float32 model
    assert dst32["classifier"][0].weight.data.dtype == np.float32


def test_load_state_dict_lists_every_problem_and_changes_nothing():
    model = small_net()
    state = model.state_dict()
    del state["features.1.beta"]
    state["classifier.9.weight"] = np.zeros(3)
    state["classifier.0.weight"] = np.zeros((5, 12))
    before = model.state_dict()
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    assert "missing keys: features.1.beta" in message
    assert "unexpected keys: classifier.9.weight" in message
    assert "classifier.0.weight: got (5, 12), expected (12, 5)" in message
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_construction_errors():
    with pytest.raises(TypeError, match="Sequential: item '0' is a int"):
        Sequential(3)
    with pytest.raises(ValueError, match="two children are named 'a'"):
        Sequential(("a", ReLU()), ("a", ReLU()))
    with pytest.raises(ValueError, match="without dots"):
        Sequential(("a.b", ReLU()))


def test_summary_method_prints_and_returns_the_table(capsys):
    model = small_net()
    result = model.summary((2, 4, 4))
    printed = capsys.readouterr().out
    assert isinstance(result, Summary) and printed.strip() == str(result).strip()
    assert result.total_params == model.num_parameters()
    assert "features.0 (Conv2D)" in printed and "classifier.3 (Dense)" in printed
    assert model.summary((2, 4, 4), print_fn=None).total_params == result.total_params
    assert capsys.readouterr().out == ""
