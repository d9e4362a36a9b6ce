"""The same weights in a PyTorch network built from the same configuration give the same
logits and gradients (float64, 1e-8).

The PyTorch network is written here from the configuration, independently of minivgg, in
torchvision's layout, so the parameter names line up; the only translations are Dense
weights (ours (in, out), torch's (out, in)), batch norm's gamma/beta (torch's weight/bias)
and LRN's alpha (torch divides it by the window size).
"""

from __future__ import annotations

import numpy as np
import pytest

from minivgg.models import VGG_CONFIGS, vgg

pytestmark = pytest.mark.crosscheck
torch = pytest.importorskip("torch")
nn = torch.nn

TOL = 1e-8
WIDTH, SIZE, FC = 1 / 8, 64, 32


def torch_vgg(config, num_classes, batch_norm):
    layers, c = [], 3
    for item in VGG_CONFIGS[config]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        elif item == "LRN":
            layers.append(nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0))
        else:
            out, k = item if isinstance(item, tuple) else (item, 3)
            out = max(1, round(out * WIDTH))
            layers.append(nn.Conv2d(c, out, k, padding=k // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            c = out
    side = SIZE // 32
    head = [nn.Linear(c * side * side, FC), nn.ReLU(), nn.Dropout(0.0),
            nn.Linear(FC, FC), nn.ReLU(), nn.Dropout(0.0), nn.Linear(FC, num_classes)]
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(*layers))
    model.add_module("flatten", nn.Flatten())
    model.add_module("classifier", nn.Sequential(*head))
    return model.double()


def to_torch_name(name):
    return name.replace(".gamma", ".weight").replace(".beta", ".bias")


def copy_weights(ours, theirs):
    state = {}
    for name, value in ours.state_dict().items():
        if name.startswith("classifier") and name.endswith("weight"):
            value = value.T                                     # Dense (in, out) -> (out, in)
        state[to_torch_name(name)] = torch.tensor(np.ascontiguousarray(value))
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)


def close(ours, theirs):
    theirs = theirs.detach().numpy()
    err = np.abs(ours - theirs).max() / max(1e-300, np.abs(theirs).max())
    assert err < TOL, err
    return err


@pytest.mark.parametrize("config,batch_norm", [("A", False), ("A-LRN", False), ("C", False),
                                               ("D", False), ("B", True)])
def test_same_logits_and_gradients_as_pytorch(config, batch_norm):
    ours = vgg(config, 10, SIZE, width=WIDTH, fc_width=FC, dropout=0.0, batch_norm=batch_norm,
               seed=0, dtype=np.float64)
    theirs = torch_vgg(config, 10, batch_norm)
    copy_weights(ours, theirs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, SIZE, SIZE)) * 30    # large enough for LRN to normalise
    g = rng.standard_normal((3, 10))

    theirs.train()                                          # batch statistics, like ours
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.tensor(g))
    y = ours.forward(x, training=True)
    dx = ours.backward(g)
    close(y, yt)
    close(dx, xt.grad)
    torch_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters().items():
        grad = torch_params[to_torch_name(name)].grad
        if batch_norm and name.startswith("features") and name.endswith(".bias"):
            # a convolution's bias before batch norm: the gradient is exactly zero, both
            # sides hold only rounding noise, so compare absolutely
            assert np.abs(p.grad).max() < 1e-12 and grad.abs().max().item() < 1e-12, name
            continue
        close(p.grad, grad.T if p.grad.ndim == 2 else grad)
    for name, buf in ours.named_buffers().items():          # running statistics
        close(buf, theirs.state_dict()[name])

    theirs.eval()                                           # evaluation mode
    with torch.no_grad():
        close(ours.forward(x, training=False), theirs(torch.tensor(x)))
