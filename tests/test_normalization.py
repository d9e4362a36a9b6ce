"""LocalResponseNorm and BatchNorm2D: formulas, gradients (float64, < 1e-7), PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from minivgg import backend
from minivgg.distributed import SingleProcess
from minivgg.gradcheck import check_layer
from minivgg.layers import BatchNorm2D, Dropout, LocalResponseNorm, ReLU, SyncBatchNorm2D
from minivgg.models import Sequential

TOL = 1e-7


# -- local response normalisation -------------------------------------------------------------

def lrn_by_the_formula(a, n=5, k=2.0, alpha=1e-4, beta=0.75):
    """b_c = a_c / (k + alpha * sum_{c' within n//2 of c} a_c'^2)^beta, written as loops."""
    b = np.empty_like(a)
    channels = a.shape[1]
    for c in range(channels):
        lo, hi = max(0, c - n // 2), min(channels - 1, c + n // 2)
        d = k + alpha * (a[:, lo:hi + 1] ** 2).sum(axis=1)
        b[:, c] = a[:, c] / d ** beta
    return b


@pytest.mark.parametrize("channels", [1, 3, 7])
def test_lrn_forward_matches_the_formula(rng, channels):
    x = rng.standard_normal((2, channels, 3, 4)) * 40    # large enough for alpha to matter
    layer = LocalResponseNorm()
    assert (layer.n, layer.k, layer.alpha, layer.beta) == (5, 2.0, 1e-4, 0.75)
    np.testing.assert_allclose(layer.forward(x), lrn_by_the_formula(x), rtol=1e-13)
    layer3 = LocalResponseNorm(n=3, k=1.0, alpha=0.05, beta=0.5)
    np.testing.assert_allclose(layer3.forward(x), lrn_by_the_formula(x, 3, 1.0, 0.05, 0.5),
                               rtol=1e-13)


def test_lrn_normalises_visibly_at_large_activations(rng):
    x = np.full((1, 5, 1, 1), 100.0)
    # centre channel: d = 2 + 1e-4 * 5 * 100^2 = 7
    assert LocalResponseNorm().forward(x)[0, 2, 0, 0] == pytest.approx(100 / 7 ** 0.75)


@pytest.mark.parametrize("shape,params", [
    ((2, 7, 3, 3), dict()),                                    # the paper's constants
    ((2, 7, 3, 3), dict(n=3, k=1.0, alpha=0.1, beta=0.75)),    # strong normalisation
    ((1, 2, 4, 3), dict(n=5, k=1.0, alpha=0.2, beta=0.6)),     # window wider than C
])
def test_lrn_gradients(rng, shape, params):
    x = rng.standard_normal(shape) * (30 if not params else 2)
    errors = check_layer(LocalResponseNorm(**params), x, tol=TOL)
    assert errors["input"] < TOL


def test_lrn_errors(rng):
    with pytest.raises(ValueError, match="odd"):
        LocalResponseNorm(n=4)
    with pytest.raises(ValueError, match="LocalResponseNorm.*4-D"):
        LocalResponseNorm().forward(rng.standard_normal((2, 3)))
    with pytest.raises(RuntimeError, match="LocalResponseNorm.*backward"):
        LocalResponseNorm().backward(np.ones((1, 1, 1, 1)))


@pytest.mark.crosscheck
@pytest.mark.parametrize("channels", [3, 8])
def test_lrn_matches_torch(rng, channels):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, channels, 4, 5)) * 50
    g = rng.standard_normal(x.shape)
    layer = LocalResponseNorm()
    y = layer.forward(x)
    dx = layer.backward(g)
    # torch divides alpha by the window size: alpha_torch = alpha * n
    ref = torch.nn.LocalResponseNorm(size=5, alpha=1e-4 * 5, beta=0.75, k=2.0)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)


# -- batch normalisation ----------------------------------------------------------------------

def bn64(channels, rng, **kwargs):
    layer = BatchNorm2D(channels, **kwargs).astype(np.float64)
    layer.gamma.data[:] = rng.standard_normal(channels)
    layer.beta.data[:] = rng.standard_normal(channels)
    return layer


def test_bn_training_forward_normalises_each_channel(rng):
    x = rng.standard_normal((8, 3, 5, 5)) * np.array([1, 10, 0.1]).reshape(1, 3, 1, 1) + 5
    y = BatchNorm2D(3).astype(np.float64).forward(x, training=True)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    var = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), var / (var + 1e-5), rtol=1e-12)


def test_bn_running_statistics_and_eval(rng):
    layer = bn64(3, rng, momentum=0.25)
    x = rng.standard_normal((4, 3, 2, 3)) * 2 + 1
    layer.forward(x, training=True)
    m = 4 * 2 * 3
    np.testing.assert_allclose(layer.running_mean, 0.25 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(layer.running_var,
                               0.75 + 0.25 * x.var(axis=(0, 2, 3)) * m / (m - 1), rtol=1e-12)
    before = layer.running_mean.copy()
    y = layer.forward(x, training=False)           # evaluation: no update, running stats used
    np.testing.assert_array_equal(layer.running_mean, before)
    g, b = layer.gamma.data.reshape(1, 3, 1, 1), layer.beta.data.reshape(1, 3, 1, 1)
    expected = (g * (x - layer.running_mean.reshape(1, 3, 1, 1))
                / np.sqrt(layer.running_var.reshape(1, 3, 1, 1) + 1e-5) + b)
    np.testing.assert_allclose(y, expected, rtol=1e-12)


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (2, 2, 5, 4), (16, 5, 1, 1)])
def test_bn_gradients(rng, shape):
    layer = bn64(shape[1], rng)
    x = rng.standard_normal(shape) * 3 + 2
    errors = check_layer(layer, x, tol=TOL)
    assert set(errors) == {"input", "gamma", "beta"}


# -- batch norm with the ReLU after it fused (Sequential, on the Numba kernels) ------------------

def bn_relu_input(rng, layer, shape, margin=0.05):
    """x whose batch-norm outputs all stay ``margin`` away from the ReLU's kink at 0, so
    the finite differences (steps of 1e-6) never cross it."""
    for _ in range(100):
        x = rng.standard_normal(shape) * 3 + 2
        if np.abs(layer.forward(x, training=True)).min() > margin:
            layer.cache = None
            return x
    raise AssertionError("no input away from the kink found")


@pytest.mark.parametrize("kernels", ["numpy", "numba"])
def test_bn_with_relu_fused_gradients(rng, kernels, monkeypatch):
    """Sequential(BatchNorm2D, ReLU): fused into one pass on Numba, two layers on NumPy;
    float64 gradients against finite differences either way, for x, gamma and beta."""
    monkeypatch.setattr(backend, "_cpu_kernels", kernels)
    bn = bn64(3, rng)
    model = Sequential(bn, ReLU())
    x = bn_relu_input(rng, bn, (4, 3, 3, 3))
    model.forward(x, training=True)
    assert model._fused == ({1} if kernels == "numba" else set())
    errors = check_layer(model, x, tol=TOL)
    assert set(errors) == {"input", "0.gamma", "0.beta"}


@pytest.mark.parametrize("training", [True, False])
def test_fused_bn_relu_gives_the_numbers_of_the_two_layers(rng, training, monkeypatch):
    """On Numba, Sequential runs batch norm and its ReLU as one pass; the output and every
    gradient are exactly those of the two layers called one after the other."""
    monkeypatch.setattr(backend, "_cpu_kernels", "numba")
    x = rng.standard_normal((4, 5, 6, 6)).astype(np.float32)
    dout = rng.standard_normal((4, 5, 6, 6)).astype(np.float32)
    results = []
    for fused in (True, False):
        bn, relu = BatchNorm2D(5), ReLU(inplace=True)
        bn.gamma.data[:] = np.linspace(-1.5, 1.5, 5)
        bn.beta.data[:] = np.linspace(0.5, -0.5, 5)
        if fused:
            model = Sequential(bn, relu)
            y = model.forward(x, training)
            assert model._fused == {1} and relu.cache is None
            dx = model.backward(dout)
        else:
            y = relu.forward(bn.forward(x, training), training)
            dx = bn.backward(relu.backward(dout))
        results.append((y, dx, bn.gamma.grad.copy(), bn.beta.grad.copy(),
                        bn.running_mean.copy(), bn.running_var.copy()))
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)


def test_bn_relu_are_not_fused_for_a_subclass_or_another_activation(rng, monkeypatch):
    """Only exactly BatchNorm2D then ReLU: SyncBatchNorm2D has its own forward, and a
    layer between the two (or after neither) leaves every layer to run on its own."""
    monkeypatch.setattr(backend, "_cpu_kernels", "numba")
    x = rng.standard_normal((2, 3, 4, 4))
    sync = SyncBatchNorm2D.from_batch_norm(bn64(3, rng), SingleProcess())
    for model in (Sequential(sync, ReLU()), Sequential(bn64(3, rng), Dropout(0.0), ReLU()),
                  Sequential(ReLU(), bn64(3, rng))):
        model.forward(x, training=True)
        assert model._fused == set()
        model.backward(np.ones_like(x))


def test_bn_parameters_buffers_and_state(rng):
    layer = BatchNorm2D(4)
    assert [p.decay for p in layer.parameters()] == [False, False]
    assert set(layer.named_buffers()) == {"running_mean", "running_var"}
    model = Sequential(("bn", layer))
    assert set(model.state_dict()) == {"bn.gamma", "bn.beta", "bn.running_mean", "bn.running_var"}
    model.astype(np.float64)
    assert layer.running_var.dtype == np.float64 and layer.gamma.data.dtype == np.float64


def test_bn_errors(rng):
    layer = BatchNorm2D(3)
    with pytest.raises(ValueError, match="BatchNorm2D: expected 3 channels.*\\(2, 4, 2, 2\\)"):
        layer.forward(rng.standard_normal((2, 4, 2, 2)).astype(np.float32))
    with pytest.raises(ValueError, match="BatchNorm2D: training needs more than one value"):
        layer.forward(np.ones((1, 3, 1, 1), dtype=np.float32))
    with pytest.raises(TypeError, match="BatchNorm2D: input dtype float64"):
        layer.forward(np.ones((2, 3, 2, 2)))
    with pytest.raises(RuntimeError, match="BatchNorm2D.*backward"):
        BatchNorm2D(2).backward(np.ones((2, 2, 1, 1), dtype=np.float32))


@pytest.mark.crosscheck
def test_bn_matches_torch_in_training_and_evaluation(rng):
    torch = pytest.importorskip("torch")
    c = 5
    ours = bn64(c, rng, momentum=0.1)
    ref = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=0.1).double()
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(ours.gamma.data))
        ref.bias.copy_(torch.tensor(ours.beta.data))
    ref.train()
    for step in range(3):                          # running statistics over several batches
        x = rng.standard_normal((4, c, 3, 2)) * (step + 1) + step
        g = rng.standard_normal(x.shape)
        y = ours.forward(x, training=True)
        dx = ours.backward(g)
        xt = torch.tensor(x, requires_grad=True)
        ref.zero_grad()
        yt = ref(xt)
        yt.backward(torch.tensor(g))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ours.gamma.grad, ref.weight.grad.numpy(), rtol=1e-12)
        np.testing.assert_allclose(ours.beta.grad, ref.bias.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.running_mean, ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.running_var, ref.running_var.numpy(), rtol=1e-12)
    ref.eval()
    x = rng.standard_normal((3, c, 2, 2))
    with torch.no_grad():
        expected = ref(torch.tensor(x)).numpy()
    np.testing.assert_allclose(ours.forward(x, training=False), expected, rtol=1e-12, atol=1e-12)
