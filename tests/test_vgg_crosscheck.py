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

from minivgg.layers import BatchNorm2D
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


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_sgd_training_steps_match_pytorch(backend):
    """Four training steps of a batch-norm VGG (loss, backward, SGD with momentum and weight
    decay on weights only) from the same weights on the same batches: the same weights,
    running statistics and evaluation logits as PyTorch's, in float64. This is the parity
    run of benchmarks/torch_parity.py in miniature, with no room for rounding to grow."""
    import minivgg as mv
    from minivgg.losses import SoftmaxCrossEntropy
    from minivgg.optim import SGD
    previous = mv.get_backend()
    mv.set_backend(backend)
    try:
        ours = vgg("A", 10, SIZE, width=WIDTH, fc_width=FC, dropout=0.0, batch_norm=True,
                   seed=0, dtype=np.float64)
        theirs = torch_vgg("A", 10, batch_norm=True)
        copy_weights(ours, theirs)
        optimizer, loss_fn = SGD(ours, lr=0.05, momentum=0.9, weight_decay=5e-4), \
            SoftmaxCrossEntropy()
        params = list(theirs.parameters())
        torch_opt = torch.optim.SGD(
            [{"params": [p for p in params if p.ndim > 1], "weight_decay": 5e-4},
             {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
            lr=0.05, momentum=0.9)
        rng = np.random.default_rng(1)
        theirs.train()
        for _ in range(4):
            x, y = rng.standard_normal((4, 3, SIZE, SIZE)), rng.integers(0, 10, 4)
            loss_fn.forward(ours.forward(x, training=True), y)
            ours.backward(loss_fn.backward())
            optimizer.step()
            torch_opt.zero_grad()
            nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y)).backward()
            torch_opt.step()
        state = theirs.state_dict()
        for name, value in ours.state_dict().items():
            theirs_value = state[to_torch_name(name)]
            if name.startswith("features") and name.endswith(".bias"):
                # convolution biases before batch norm: zero gradient, so they stay at 0 up
                # to rounding noise on both sides (a relative error would compare noise)
                assert np.abs(value).max() < 1e-12 and theirs_value.abs().max() < 1e-12, name
                continue
            close(value, theirs_value.T if value.ndim == 2 else theirs_value)
        theirs.eval()
        x = rng.standard_normal((3, 3, SIZE, SIZE))
        with torch.no_grad():
            close(ours.forward(x, training=False), theirs(torch.tensor(x)))
    finally:
        mv.set_backend(previous)


@pytest.mark.parametrize("config,batch_norm", [("A", True), ("A-LRN", False)])
def test_eval_mode_input_gradient_equals_pytorch(config, batch_norm):
    """Backward after an evaluation-mode forward (dropout off, running statistics) gives
    PyTorch's input gradient of the same network in eval mode: what saliency needs."""
    ours = vgg(config, 10, SIZE, width=WIDTH, fc_width=FC, dropout=0.5, batch_norm=batch_norm,
               seed=0, dtype=np.float64)
    rng = np.random.default_rng(5)
    for _, layer in ours.named_layers():                # non-trivial running statistics
        if isinstance(layer, BatchNorm2D):
            layer.running_mean[...] = rng.uniform(-0.3, 0.3, layer.num_features)
            layer.running_var[...] = rng.uniform(0.5, 2.0, layer.num_features)
    theirs = torch_vgg(config, 10, batch_norm)
    for module in theirs.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.5
    copy_weights(ours, theirs)
    theirs.eval()
    ours.eval()
    x = rng.standard_normal((2, 3, SIZE, SIZE)) * 30
    g = rng.standard_normal((2, 10))
    before = ours.state_dict()
    logits = ours(x)
    dx = ours.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    (yt * torch.tensor(g)).sum().backward()
    close(logits, yt)
    close(dx, xt.grad)
    after = ours.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)   # statistics untouched
    assert not ours.training
