"""The VGG builder: Table 1 as data, heads, widths, initialisation, whole-model gradients,
the paper's initialisation from A, and dense evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minivgg.gradcheck import check_model
from minivgg.layers import (
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LocalResponseNorm,
    MaxPool2D,
    ReLU,
)
from minivgg.models import VGG, VGG_CONFIGS, init_from, to_dense_eval, vgg
from minivgg.models.init import conv_names

CONFIGS = ["A", "A-LRN", "B", "C", "D", "E"]
MODEL_TOL = 1e-6       # relative error allowed per parameter tensor in whole-model checks


def layers_of(model, kind):
    return [layer for _, layer in model.named_layers() if isinstance(layer, kind)]


# -- the configurations -----------------------------------------------------------------------

def test_configurations_are_table_1():
    assert VGG_CONFIGS["A"] == [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    assert VGG_CONFIGS["A-LRN"] == [64, "LRN"] + VGG_CONFIGS["A"][1:]
    assert VGG_CONFIGS["C"][6:10] == [256, 256, (256, 1), "M"]
    # weight layers: 11, 11, 13, 16, 16, 19 (convolutions + the three fully connected)
    weights = {k: sum(1 for v in c if v not in ("M", "LRN")) + 3 for k, c in VGG_CONFIGS.items()}
    assert weights == {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19}
    for config in VGG_CONFIGS.values():
        assert config.count("M") == 5
        channels = [v[0] if isinstance(v, tuple) else v for v in config if v not in ("M", "LRN")]
        assert sorted(set(channels)) == [64, 128, 256, 512]


@pytest.mark.parametrize("alias,config", [("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"),
                                          ("VGG19", "E")])
def test_aliases(alias, config):
    a = vgg(alias, 10, 32, "cifar", width=1 / 16, seed=0)
    b = vgg(config, 10, 32, "cifar", width=1 / 16, seed=0)
    assert a.spec["config"] == config
    assert {k: v.shape for k, v in a.state_dict().items()} == \
        {k: v.shape for k, v in b.state_dict().items()}


def test_layers_built_for_each_entry():
    model = vgg("C", 10, 32, "cifar", width=1 / 16, seed=0)
    convs = layers_of(model, Conv2D)
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs][4:7] == \
        [(16, 3, 1), (16, 3, 1), (16, 1, 0)]           # block 3: conv3, conv3, conv1
    assert [c.kernel_size for c in convs].count(1) == 3
    lrn = vgg("A-LRN", 10, 32, "cifar", width=1 / 16)["features"]
    assert [type(layer) for layer in lrn.layers[:4]] == [Conv2D, ReLU, LocalResponseNorm,
                                                         MaxPool2D]
    bn = vgg("A", 10, 32, "cifar", width=1 / 16, batch_norm=True)["features"]
    assert [type(layer) for layer in bn.layers[:4]] == [Conv2D, BatchNorm2D, ReLU, MaxPool2D]


def test_torchvision_style_names():
    model = vgg("D", 1000, 64, fc_width=8, width=1 / 16, seed=0)
    names = list(model.state_dict())
    assert names[:2] == ["features.0.weight", "features.0.bias"]
    assert "features.28.weight" in names                 # VGG-16's last convolution
    assert [n for n in names if n.startswith("classifier")] == [
        "classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias",
        "classifier.6.weight", "classifier.6.bias"]
    assert model.names == ["features", "flatten", "classifier"]
    bn = vgg("D", 10, 32, "cifar", width=1 / 16, batch_norm=True).state_dict()
    assert {"features.1.running_mean", "features.1.running_var", "features.41.gamma"} <= set(bn)


def test_width_and_heads():
    model = vgg("A", 10, 32, "cifar", width=0.25, batch_norm=True, seed=0)
    assert [c.out_channels for c in layers_of(model, Conv2D)] == [16, 32, 64, 64, 128, 128,
                                                                  128, 128]
    assert [type(layer) for layer in model["classifier"]] == [Dense]
    assert model["classifier"][0].in_features == 128
    hidden = vgg("A", 100, 32, "cifar", width=0.5, hidden=(512,), dropout=0.3)["classifier"]
    assert [type(layer) for layer in hidden] == [Dense, ReLU, Dropout, Dense]
    assert (hidden[0].in_features, hidden[0].out_features, hidden[3].out_features) == \
        (256, 512, 100)
    assert hidden[2].p == 0.3
    head = vgg("A", 7, 64, width=1 / 16, fc_width=24)["classifier"]   # imagenet head at 64
    assert [type(layer) for layer in head] == [Dense, ReLU, Dropout] * 2 + [Dense]
    assert [d.in_features for d in layers_of(head, Dense)] == [32 * 2 * 2, 24, 24]
    assert vgg("A", 3, 100, width=1 / 16, fc_width=8)["classifier"][0].in_features == 32 * 3 * 3


def test_builder_errors():
    with pytest.raises(ValueError, match="unknown configuration 'F'"):
        vgg("F")
    with pytest.raises(ValueError, match="unknown head 'tiny'"):
        vgg("A", head="tiny")
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        vgg("A", init="xavier")
    with pytest.raises(ValueError, match="input_size 16 is too small for configuration A"):
        vgg("A", 10, 16, "cifar", width=1 / 16)
    with pytest.raises(ValueError, match="bad configuration entry"):
        vgg([64, "M", "X"], 10, 32, "cifar")
    with pytest.raises(ValueError, match="either seed or rng"):
        vgg("A", seed=1, rng=np.random.default_rng(1))


def test_seed_spec_and_custom_configuration():
    a = vgg("B", 10, 32, "cifar", width=1 / 8, seed=3).state_dict()
    b = vgg("B", 10, 32, "cifar", width=1 / 8, seed=3).state_dict()
    c = vgg("B", 10, 32, "cifar", width=1 / 8, seed=4).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["features.0.weight"], c["features.0.weight"])
    model = vgg([8, "M", (4, 1), "M"], 5, 8, "cifar", hidden=(6,))
    rebuilt = VGG.from_spec(json.loads(json.dumps(model.spec)))   # the spec survives JSON
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert model.output_shape((3, 8, 8)) == (5,)


def test_initialisation_schemes():
    he = vgg("A", 1000, 32, width=0.5, fc_width=512, seed=0)
    conv, dense = layers_of(he, Conv2D)[3], layers_of(he, Dense)[1]
    assert conv.weight.data.std() == pytest.approx(np.sqrt(2 / (128 * 9)), rel=0.02)  # fan-out
    assert dense.weight.data.std() == pytest.approx(0.01, rel=0.02)
    assert all(np.all(layer.bias.data == 0) for layer in layers_of(he, (Conv2D, Dense)))
    paper = vgg("A", 1000, 32, width=0.5, fc_width=512, seed=0, init="paper")
    for layer in layers_of(paper, (Conv2D, Dense))[1:]:
        assert layer.weight.data.std() == pytest.approx(0.1, rel=0.05)  # variance 10^-2
        assert np.all(layer.bias.data == 0)
    assert paper["features"][0].weight.data.dtype == np.float32


# -- whole-model gradient checks --------------------------------------------------------------

def gradcheck_vgg(config, batch_norm):
    """Cross-entropy gradients of a width-1/16 VGG at 32x32 (cifar head, one hidden layer
    with dropout, whose mask gradcheck freezes), against finite differences, float64.

    Returns the model, {tensor: relative error} and the tensors whose gradient is exactly 0.
    """
    model = vgg(config, 10, 32, "cifar", width=1 / 16, hidden=(16,), dropout=0.5,
                batch_norm=batch_norm, seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    for dense in layers_of(model, Dense):    # weights of O(1/sqrt(fan-in)), not 0.01: gradients
        dense.weight.data[...] = (rng.standard_normal(dense.weight.shape)  # far above the
                                  / np.sqrt(dense.in_features))            # rounding noise
    x = rng.standard_normal((2, 3, 32, 32))
    labels = np.array([3, 7])
    errors = check_model(model, x, labels, tol=MODEL_TOL, max_entries=8)
    # With batch norm in training mode a convolution's bias has *exactly* zero gradient (the
    # batch mean removes it): check_model reports such tensors as vanishing, not as errors.
    biases = {f"{path}.bias" for path, layer in model.named_layers() if isinstance(layer, Conv2D)}
    assert set(errors.zero) == (biases if batch_norm else set())
    return model, errors, set(errors.zero)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("config", [c if c == "A" else pytest.param(c, marks=pytest.mark.slow)
                                    for c in CONFIGS])
def test_whole_model_gradients(config, batch_norm):
    model, errors, zero = gradcheck_vgg(config, batch_norm)
    assert set(errors) | zero == {"input", *model.named_parameters()}     # every tensor
    assert max(errors.values()) < MODEL_TOL


def test_full_width_cifar_vgg16_forward_backward_shapes():
    model = vgg("vgg16", 10, 32, "cifar", batch_norm=True, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = model.forward(x, training=True)
    assert y.shape == (2, 10) and y.dtype == np.float32
    dx = model.backward(np.ones_like(y) / 2)
    assert dx.shape == x.shape and dx.dtype == np.float32
    for name, p in model.named_parameters().items():
        assert p.grad.shape == p.data.shape and np.isfinite(p.grad).all(), name
    assert model.num_parameters() == 14_728_266     # 14,714,688 conv + 8,448 BN + 5,130


# -- the paper's initialisation of deeper nets from A ------------------------------------------

@pytest.mark.parametrize("config", ["B", "C", "D", "E"])
def test_init_from_a_copies_four_convolutions_and_the_head(config):
    a = vgg("A", 10, 64, width=1 / 16, fc_width=16, seed=1)
    deep = vgg(config, 10, 64, width=1 / 16, fc_width=16, seed=2)
    before = deep.state_dict()
    pairs = init_from(deep, a)
    assert len(pairs) == 7
    names_a, names_deep = conv_names(a), conv_names(deep)
    for name in ("conv1_1", "conv2_1", "conv3_1", "conv3_2"):
        np.testing.assert_array_equal(names_deep[name][1].weight.data,
                                      names_a[name][1].weight.data)
    np.testing.assert_array_equal(names_deep["conv1_2"][1].weight.data,   # not in A: untouched
                                  before[names_deep["conv1_2"][0] + ".weight"])
    for d, s in zip(layers_of(deep, Dense), layers_of(a, Dense)):
        np.testing.assert_array_equal(d.weight.data, s.weight.data)
        np.testing.assert_array_equal(d.bias.data, s.bias.data)
    copied = {dst for dst, _ in pairs}
    if config == "D":
        assert copied == {"features.0", "features.5", "features.10", "features.12",
                          "classifier.0", "classifier.3", "classifier.6"}


def test_init_from_rejects_mismatched_shapes_and_changes_nothing():
    a = vgg("A", 10, 64, width=1 / 8, fc_width=16, seed=1)
    deep = vgg("D", 10, 64, width=1 / 16, fc_width=16, seed=2)
    before = deep.state_dict()
    with pytest.raises(ValueError, match=r"init_from: cannot copy features.0.weight of shape "
                                         r"\(8, 3, 3, 3\) into features.0.weight of shape "
                                         r"\(4, 3, 3, 3\)"):
        init_from(deep, a)
    assert all(np.array_equal(v, before[k]) for k, v in deep.state_dict().items())
    cifar = vgg("A", 10, 32, "cifar", width=1 / 16)
    with pytest.raises(ValueError, match="deep model has 3 Dense layers and the trained "
                                         "model 1"):
        init_from(vgg("D", 10, 32, width=1 / 16, fc_width=16), cifar)


# -- dense evaluation ---------------------------------------------------------------------------

def test_dense_evaluation_gives_the_same_logits_and_a_score_map():
    model = vgg("A", 10, 224, width=1 / 16, fc_width=32, seed=0, dtype=np.float64)
    dense = to_dense_eval(model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 224, 224))
    logits = model.forward(x, training=False)
    np.testing.assert_allclose(dense.forward(x, training=False), logits, rtol=1e-12,
                               atol=1e-14)
    assert dense["classifier"][0].weight.shape == (32, 32, 7, 7)
    big = rng.standard_normal((2, 3, 256, 256))
    score_map = to_dense_eval(model, average=False).forward(big, training=False)
    assert score_map.shape == (2, 10, 2, 2)
    np.testing.assert_allclose(dense.forward(big, training=False), score_map.mean(axis=(2, 3)))
    with pytest.raises(ValueError, match="Dense: expected 1568 input features"):
        model.forward(big, training=False)
    assert type(model["classifier"][0]) is Dense     # the original is unchanged


def test_dense_evaluation_errors():
    from minivgg.models import Sequential
    with pytest.raises(TypeError, match="to_dense_eval: expected a VGG"):
        to_dense_eval(Sequential(Flatten()))
    model = vgg("A", 10, 64, width=1 / 16, fc_width=8)
    with pytest.raises(ValueError, match="already a dense-evaluation network"):
        to_dense_eval(to_dense_eval(model))


def test_every_saved_model_rebuilds_from_its_settings():
    """Dense-evaluation and custom models included: VGG.from_spec(spec) + load_state_dict."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 64, 64))
    plain = vgg("A", 10, 32, width=1 / 16, fc_width=8, seed=0, dtype=np.float64)
    custom = vgg([8, "M", (4, 1), "LRN", "M"], 5, 32, "cifar", hidden=(6,), seed=1,
                 batch_norm=True, dtype=np.float64)
    for model in (plain, to_dense_eval(plain), to_dense_eval(plain, average=False), custom,
                  to_dense_eval(custom)):
        model.eval()
        spec = json.loads(json.dumps(model.spec))
        rebuilt = VGG.from_spec(spec, dtype=np.float64)
        rebuilt.load_state_dict(model.state_dict())
        rebuilt.eval()
        size = 64 if model.settings.dense_eval else 32
        np.testing.assert_array_equal(rebuilt(x[:, :, :size, :size]),
                                      model(x[:, :, :size, :size]))
        assert rebuilt.settings == model.settings
    with pytest.raises(ValueError, match=r"unknown settings \['colour'\]"):
        VGG.from_spec({**plain.spec, "colour": "red"})
