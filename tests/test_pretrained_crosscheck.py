"""torchvision's VGG layout saved by torch.save (legacy, zip) and as .safetensors gives
the same logits through minivgg.pretrained (split from test_pretrained.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from minivgg.models import vgg
from minivgg.pretrained import (
    UnsafeWeightsError,
    load_state,
)
from tests.test_pretrained import NAMES, Hostile

# --- against PyTorch: torchvision's VGG layout, saved by torch.save, same logits ----------

def torch_vgg(torch, layers, width, batch_norm, fc, classes):
    """A module with torchvision's VGG layout and state-dict keys (torchvision/models/vgg.py:
    make_layers, then avgpool AdaptiveAvgPool2d((7, 7)) and the 3-Linear classifier)."""
    nn = torch.nn
    features, c = [], 3
    for v in layers:
        if v == "M":
            features.append(nn.MaxPool2d(2, 2))
            continue
        out = max(1, round(v * width))
        features += [nn.Conv2d(c, out, 3, padding=1), *([nn.BatchNorm2d(out)] * batch_norm),
                     nn.ReLU(inplace=True)]
        c = out

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*features)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(c * 49, fc), nn.ReLU(True), nn.Dropout(), nn.Linear(fc, fc),
                nn.ReLU(True), nn.Dropout(), nn.Linear(fc, classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return VGG()


def random_torch_vgg(torch, name, width=0.25, dtype="float32", seed=0):
    """``name``'s layout with random weights and non-trivial running statistics."""
    from minivgg.models import ALIASES, VGG_CONFIGS
    torch.manual_seed(seed)
    net = torch_vgg(torch, VGG_CONFIGS[ALIASES[name.split("_")[0]]], width,
                    name.endswith("_bn"), fc=64, classes=10)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                # He-normal keeps the signal alive through 19 layers (torch's default init
                # shrinks it until the biases alone decide the logits, hiding any error)
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.bias.normal_(0.0, 0.02)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(123)
    return net.to(getattr(torch, dtype)).eval()


def save(torch, net, path: Path, fmt: str) -> Path:
    if fmt == "safetensors":
        st = pytest.importorskip("safetensors.numpy")
        st.save_file({k: v.numpy() for k, v in net.state_dict().items()}, str(path))
    else:
        torch.save(net.state_dict(), path, _use_new_zipfile_serialization=fmt == "zip")
    return path


def worst_relative_error(torch, net, name, path, size, width, dtype):
    model = vgg(name.split("_")[0], num_classes=10, input_size=size, width=width, fc_width=64,
                batch_norm=name.endswith("_bn"), dtype=np.dtype(dtype), weights=path)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1),
                    dtype=getattr(torch, dtype))
    with torch.no_grad():
        expected = net(x).numpy()
    got = model.forward(x.numpy(), training=False)
    assert got.dtype == np.dtype(dtype) and got.shape == expected.shape == (2, 10)
    # Deep ReLU nets at random init give every input nearly the same logits, so the
    # part that depends on the input (image 0 minus image 1) is compared on its own too.
    d_got, d_expected = got[0] - got[1], expected[0] - expected[1]
    assert np.abs(d_expected).max() > 0.01 * np.abs(expected).max(), "input barely matters"
    return max(float(np.abs(got - expected).max() / np.abs(expected).max()),
               float(np.abs(d_got - d_expected).max() / np.abs(d_expected).max()))


TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


@pytest.mark.crosscheck
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fmt", ["legacy", "zip", "safetensors"])
@pytest.mark.parametrize("name", [n if n in ("vgg11", "vgg11_bn") else
                                  pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
def test_logits_equal_torchs_for_every_configuration_and_format(tmp_path, name, fmt, dtype):
    torch = pytest.importorskip("torch")
    net = random_torch_vgg(torch, name, dtype=dtype)
    path = save(torch, net, tmp_path / f"{name}.{fmt}", fmt)
    error = worst_relative_error(torch, net, name, path, 32, 0.25, dtype)
    print(f"{name} {fmt} {dtype}: worst relative error {error:.2e}")
    assert error < TOLERANCE[dtype]


@pytest.mark.crosscheck
@pytest.mark.parametrize("size", [64, 96, 224])   # 2x2, 3x3 (pool folded) and 7x7 (none)
def test_the_adaptive_pool_is_folded_exactly_at_other_input_sizes(tmp_path, size):
    torch = pytest.importorskip("torch")
    net = random_torch_vgg(torch, "vgg11_bn", width=0.125, dtype="float64")
    path = save(torch, net, tmp_path / "w.pth", "zip")
    error = worst_relative_error(torch, net, "vgg11_bn", path, size, 0.125, "float64")
    print(f"vgg11_bn at {size}: worst relative error {error:.2e}")
    assert error < TOLERANCE["float64"]


@pytest.mark.crosscheck
@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_real_torch_files_equal_torch_load_and_hostile_ones_are_refused(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    tensors = {"h": torch.randn(3, 2).half().t(), "l": torch.arange(5)[1:],
               "b": torch.randn(4).to(torch.bfloat16), "d": torch.randn(2, 2).double()}
    path = tmp_path / "t.pth"
    torch.save(tensors, path, _use_new_zipfile_serialization=fmt == "zip")
    state = load_state(path)
    for k, t in tensors.items():
        np.testing.assert_array_equal(state[k], t.float().numpy() if k == "b" else t.numpy())
        assert state[k].dtype == (np.float32 if k == "b" else t.numpy().dtype)
    marker = tmp_path / "pwned"
    torch.save({"x": Hostile(marker)}, path, _use_new_zipfile_serialization=fmt == "zip")
    with pytest.raises(UnsafeWeightsError, match="posix.system"):
        load_state(path)
    assert not marker.exists()

