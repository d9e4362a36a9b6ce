"""model.summary(): exact parameter totals and multiply-accumulates of the paper's networks.

The full-size models (133-144 M parameters) are real model objects; most are built with
``NoDraws`` -- a Generator whose normal draws are zeros -- because the summary reads only
shapes and drawing 138 M random numbers costs seconds. One test builds VGG-C with its real
initialisation, as a user would.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from minivgg.layers import Conv2D, Dense, Flatten, MaxPool2D
from minivgg.models import VGG, Sequential, VGGSettings, vgg
from minivgg.models.init import NoDraws
from minivgg.summary import state_shapes, summarize, summarize_settings

# parameters at 224x224 and 1000 classes (torchvision's counts for vgg11..vgg19, *_bn)
PARAMS = {
    ("A", False): 132_863_336, ("A-LRN", False): 132_863_336, ("B", False): 133_047_848,
    ("C", False): 133_638_952, ("D", False): 138_357_544, ("E", False): 143_667_240,
    ("A", True): 132_868_840, ("B", True): 133_053_736, ("D", True): 138_365_992,
    ("E", True): 143_678_248,
}
# multiply-accumulates per image, in G, as torchvision's table rounds them ("GFLOPS")
GMACS = {"A": 7.609, "A-LRN": 7.609, "B": 11.308, "D": 15.47, "E": 19.632}


@pytest.mark.parametrize("config,batch_norm", [
    key if key == ("D", False) else pytest.param(*key, marks=pytest.mark.slow) for key in PARAMS])
def test_paper_networks_totals(config, batch_norm):
    model = vgg(config, num_classes=1000, input_size=224, batch_norm=batch_norm,
                rng=NoDraws())
    s = model.summary((3, 224, 224), print_fn=None)
    assert s.total_params == PARAMS[config, batch_norm]
    assert s.total_params == sum(v.size for k, v in model.state_dict().items()
                                 if "running" not in k)
    if config in GMACS:
        assert round(s.macs / 1e9, 3) == GMACS[config]
    if batch_norm:       # running mean and variance: 2 values per BN channel
        assert s.buffer_values == 2 * (s.total_params - PARAMS[config, False]) // 2
    assert s.rows[-1].output_shape == (1000,)
    assert f"Total params: {PARAMS[config, batch_norm]:,}" in str(s)
    del model, s
    gc.collect()


@pytest.mark.slow
def test_vgg_c_summary_with_real_weights(capsys):
    """The issue's acceptance line, as written."""
    model = vgg("C", num_classes=1000, input_size=224)
    result = model.summary((3, 224, 224))
    printed = capsys.readouterr().out
    assert "Total params: 133,638,952" in printed
    assert "features.14 (Conv2D)" in printed and "(256, 56, 56)" in printed     # the 1x1 conv
    assert result.macs == 11_770_888_192
    del model
    gc.collect()


def test_rows_macs_and_activation_memory_by_hand():
    rng = np.random.default_rng(0)
    model = Sequential(Conv2D(3, 4, rng=rng), Conv2D(4, 6, kernel_size=1, padding=0, rng=rng),
                       ("pool", MaxPool2D()), ("flat", Flatten()),
                       ("fc", Dense(6 * 4 * 4, 10, rng=rng)))
    s = summarize(model, (3, 8, 8))
    assert [(r.name, r.kind, r.output_shape) for r in s.rows] == [
        ("0", "Conv2D", (4, 8, 8)), ("1", "Conv2D", (6, 8, 8)), ("pool", "MaxPool2D", (6, 4, 4)),
        ("flat", "Flatten", (96,)), ("fc", "Dense", (10,))]
    assert [r.params for r in s.rows] == [3 * 4 * 9 + 4, 4 * 6 + 6, 0, 0, 96 * 10 + 10]
    assert [r.macs for r in s.rows] == [4 * 3 * 9 * 64, 6 * 4 * 64, 0, 0, 960]
    assert s.activation_bytes == 4 * (256 + 384 + 96 + 96 + 10)         # float32
    assert s.param_bytes == 4 * s.total_params


def test_summary_says_which_layer_cannot_take_the_input():
    model = vgg("A", num_classes=10, input_size=32, head="cifar", width=1 / 16)
    with pytest.raises(ValueError, match=r"summary: layer features.20 \(MaxPool2D\) turns "
                                         r"an input of shape \(32, 1, 1\) into \(32, 0, 0\)"):
        model.summary((3, 16, 16), print_fn=None)
    with pytest.raises(ValueError, match=r"summary: layer classifier.0 \(Dense\) takes 32 "
                                         r"features, but receives \(128,\) = 128"):
        model.summary((3, 64, 64), print_fn=None)


SETTINGS = [
    VGGSettings("A", 10, 32, "cifar", 0.25, True),
    VGGSettings("A-LRN", 10, 32, "cifar", 0.125),
    VGGSettings("C", 7, 64, "imagenet", 0.0625, True, fc_width=32),
    VGGSettings((8, "M", (16, 1), "M"), 3, 16, "cifar", 1.0, False, hidden=(5, 6),
                in_channels=1),
    VGGSettings("B", 10, 64, "imagenet", 0.0625, True, fc_width=16, dense_eval=True),
    VGGSettings("E", 10, 64, "imagenet", 0.0625, False, fc_width=16, dense_eval=True,
                average=False),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: s.title + f" {s.input_size}")
def test_the_summary_from_settings_alone_equals_the_built_models(settings):
    """summarize_settings works every shape out by hand; it must agree with the real layers,
    row by row (names, kinds, shapes, parameter and buffer shapes, MACs)."""
    model = VGG(settings, rng=NoDraws())
    sides = [settings.input_size] + ([2 * settings.input_size] if settings.dense_eval else [])
    for side in sides:
        shape = (settings.in_channels, side, side)
        built, walked = summarize(model, shape), summarize_settings(settings, shape)
        assert walked.rows == built.rows
        assert str(walked) == str(built)
    assert state_shapes(settings) == {k: v.shape for k, v in model.state_dict().items()}


def test_the_summary_from_settings_refuses_what_the_model_refuses():
    with pytest.raises(ValueError, match="input_size 16 is too small"):
        summarize_settings(VGGSettings("A", 10, 16, "cifar"))
    with pytest.raises(ValueError, match=r"classifier.0 \(Dense\) takes 512 features"):
        summarize_settings(VGGSettings("A", 10, 32, "cifar"), (3, 64, 64))
