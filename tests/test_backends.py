"""Backend selection, and every layer's gradients under every available backend."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import minivgg as mv
from minivgg import backend
from minivgg.gradcheck import check_layer, check_model
from minivgg.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from minivgg.losses import SoftmaxCrossEntropy
from minivgg.models.sequential import Sequential

BACKENDS = [pytest.param("numpy", id="numpy"), pytest.param("numba", id="numba"),
            pytest.param("cupy", id="cupy", marks=pytest.mark.gpu)]


@pytest.fixture
def restore_backend():
    saved = backend._cpu_kernels, backend._device, backend._tf32
    yield
    backend._cpu_kernels, backend._device, backend._tf32 = saved


@pytest.fixture(params=BACKENDS)
def on_backend(request, restore_backend):
    """Run the test under one backend; yields a function moving host arrays to its device."""
    name = request.param
    if name == "cupy" and backend.cupy_problem() is not None:
        pytest.skip("needs CuPy and a CUDA device")
    if name == "numba":
        pytest.importorskip("numba")
    mv.set_backend(name)
    yield name


def to_backend(layer, x):
    if mv.get_backend() == "cupy":
        return layer.to("gpu"), mv.to_device(x)
    return layer, x


# -- selection -----------------------------------------------------------------------------------

def test_set_backend_resolves_and_rejects(restore_backend):
    assert mv.set_backend("numpy") == "numpy" == mv.get_backend()
    assert mv.set_backend("NumPy") == "numpy"
    expected = "cupy" if backend.cupy_problem() is None else "numba"
    assert mv.set_backend("auto") == expected == mv.get_backend()
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        mv.set_backend("tensorflow")
    assert mv.get_backend() == expected          # a failed call changes nothing


def test_minivgg_backend_variable_is_read_on_first_use(restore_backend, monkeypatch):
    monkeypatch.setenv("MINIVGG_BACKEND", "numpy")
    backend._cpu_kernels = backend._device = None
    assert mv.get_backend() == "numpy"
    code = "import minivgg as mv; print(mv.get_backend())"
    for name in ("numpy", "numba"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**__import__("os").environ, "MINIVGG_BACKEND": name})
        assert out.stdout.strip() == name, out.stderr


def test_kernels_follow_the_backend(restore_backend):
    from minivgg import kernels
    from minivgg.kernels import cpu, reference
    x = np.zeros((1, 1, 2, 2))
    mv.set_backend("numpy")
    assert kernels.implementation(x) is reference
    mv.set_backend("numba")
    assert kernels.implementation(x) is cpu


def test_cpu_kernels_and_device_are_separate_choices(restore_backend):
    from minivgg import kernels
    from minivgg.kernels import cpu, reference
    x = np.zeros((1, 1, 2, 2))
    mv.set_backend("numba")
    assert (mv.get_cpu_kernels(), mv.default_device()) == ("numba", "cpu")
    mv.set_cpu_kernels("numpy")                  # the reference, for a lesson
    assert kernels.implementation(x) is reference and mv.default_device() == "cpu"
    assert mv.get_backend() == "numpy"
    mv.set_cpu_kernels("numba")
    assert kernels.implementation(x) is cpu
    with pytest.raises(ValueError, match="set_cpu_kernels: unknown kernels 'cupy'"):
        mv.set_cpu_kernels("cupy")
    assert mv.to_device(np.ones(2), "cpu").__class__ is np.ndarray
    with pytest.raises(ValueError, match="to_device: unknown device 'tpu'"):
        mv.to_device(np.ones(2), "tpu")


@pytest.mark.skipif(backend.cupy_problem() is None, reason="CuPy works here")
def test_gpu_placement_without_cupy_says_why(restore_backend):
    from minivgg.layers import Dense
    with pytest.raises(backend.BackendUnavailable, match=r"Dense.to\('gpu'\): cannot use CuPy"):
        Dense(2, 2).to("gpu")
    with pytest.raises(backend.BackendUnavailable, match="cannot use CuPy"):
        mv.place(Dense(2, 2), device="gpu")
    assert mv.resolve_device("auto") == "cpu"


@pytest.mark.skipif(backend.cupy_problem() is None, reason="CuPy works here")
def test_cupy_unavailable_error_says_why_and_what_to_do(restore_backend):
    before = mv.get_backend()
    with pytest.raises(backend.BackendUnavailable) as err:
        mv.set_backend("cupy")
    message = str(err.value)
    reason = backend.cupy_problem()[0]
    assert f"set_backend('cupy'): cannot use CuPy ({reason})" in message
    assert "numba" in message or "install" in message
    assert mv.get_backend() == before


# The probe's messages, one per missing piece: tests/test_probe.py; TF32: tests/test_tf32.py.


def test_numba_threading_layer_is_chosen_unless_the_user_did(monkeypatch):
    numba = pytest.importorskip("numba")
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "default")
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "omp")
    backend.configure_numba_threads()
    assert numba.config.THREADING_LAYER == "default"
    monkeypatch.delenv("NUMBA_THREADING_LAYER")
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    backend.configure_numba_threads()
    assert numba.config.THREADING_LAYER == _expected_layer(numba)
    assert "GOMP_SPINCOUNT" not in os.environ        # set only while OpenMP loads
    monkeypatch.setenv("GOMP_SPINCOUNT", "77")
    backend.configure_numba_threads()
    assert os.environ["GOMP_SPINCOUNT"] == "77"      # the user's own is kept


def _expected_layer(numba) -> str:
    """GNU OpenMP with a short spin where Numba has it (Linux), else workqueue."""
    if not sys.platform.startswith("linux"):
        return "workqueue"
    try:
        from numba.np.ufunc import omppool
    except ImportError:
        return "workqueue"
    return "omp" if omppool.openmp_vendor == "GNU" else "workqueue"


# -- every layer's gradients under every backend (float64) ---------------------------------------

@pytest.mark.parametrize("c,f,hw,k,s,p", [
    (3, 4, 6, 3, 1, 1), (2, 3, 7, 3, 2, 1), (4, 3, 5, 1, 1, 0), (2, 3, 6, 5, 1, "same"),
])
def test_conv2d_gradients(on_backend, rng, c, f, hw, k, s, p):
    layer = Conv2D(c, f, kernel_size=k, stride=s, padding=p, rng=rng).astype(np.float64)
    layer.bias.data[:] = rng.standard_normal(f)
    layer, x = to_backend(layer, rng.standard_normal((2, c, hw, hw)))
    check_layer(layer, x)
    check_layer(layer, x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2))   # NHWC memory


def test_first_conv_skips_its_input_gradient(on_backend, rng):
    layer = Conv2D(3, 4, rng=rng).astype(np.float64)
    layer, x = to_backend(layer, rng.standard_normal((2, 3, 5, 5)))
    layer.input_grad = False
    layer.forward(x)
    assert layer.backward(mv.to_device(rng.standard_normal((2, 4, 5, 5)))) is None
    check_layer(layer, x, check_input=False)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (2, 1)])
def test_maxpool_gradients(on_backend, rng, k, s):
    x = rng.permutation(2 * 3 * 7 * 7).reshape(2, 3, 7, 7) * 0.01   # distinct: no ties
    layer, x = to_backend(MaxPool2D(k, s), x.astype(np.float64))
    check_layer(layer, x, eps=1e-5)


def test_relu_gradients(on_backend, rng):
    x = rng.standard_normal((2, 3, 4, 4))
    x[np.abs(x) < 0.05] = 0.5                                   # away from the kink
    layer, x = to_backend(ReLU(), x)
    check_layer(layer, x)


def test_dense_dropout_flatten_gradients(on_backend, rng):
    dense, x = to_backend(Dense(6, 4, rng=rng).astype(np.float64), rng.standard_normal((3, 6)))
    check_layer(dense, x)
    drop, x = to_backend(Dropout(0.3, rng=np.random.default_rng(0)), x)
    check_layer(drop, x)
    flat, x4 = to_backend(Flatten(), rng.standard_normal((2, 3, 2, 2)))
    check_layer(flat, x4)


def small_vgg(rng, dtype=np.float64):
    return Sequential(Conv2D(3, 4, rng=rng), ReLU(), MaxPool2D(),
                      Conv2D(4, 6, rng=rng), ReLU(), Conv2D(6, 6, stride=2, rng=rng), ReLU(),
                      MaxPool2D(), Flatten(), Dense(6, 5, rng=rng), Dropout(0.2, rng=rng),
                      ).astype(dtype)


def test_small_vgg_gradients_end_to_end(on_backend):
    model, x = to_backend(small_vgg(np.random.default_rng(3)),
                          np.random.default_rng(4).standard_normal((2, 3, 8, 8)))
    check_model(model, x, mv.to_device(np.array([1, 4])))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_backends_agree_on_a_training_step(on_backend, dtype, tol):
    """Same weights, same batch: outputs, loss and every gradient match the reference."""
    x = np.random.default_rng(4).standard_normal((4, 3, 8, 8)).astype(dtype)
    labels = np.array([0, 1, 2, 3])

    def step(name):
        mv.set_backend(name)
        model = small_vgg(np.random.default_rng(3), dtype)
        model, xd = to_backend(model, x)
        loss = SoftmaxCrossEntropy()
        out = model.forward(xd, True)
        value = loss.forward(out, mv.to_device(labels))
        dx = model.backward(loss.backward())
        grads = {k: mv.asnumpy(p.grad) for k, p in model.named_parameters().items()}
        return mv.asnumpy(out), value, mv.asnumpy(dx), grads

    out, value, dx, grads = step(on_backend)
    r_out, r_value, r_dx, r_grads = step("numpy")
    np.testing.assert_allclose(out, r_out, rtol=tol, atol=tol)
    assert abs(value - r_value) <= tol * max(1.0, abs(r_value))
    np.testing.assert_allclose(dx, r_dx, rtol=tol, atol=tol)
    for k in grads:
        np.testing.assert_allclose(grads[k], r_grads[k], rtol=tol, atol=tol, err_msg=k)


# -- PyTorch on every backend ------------------------------------------------------------------

@pytest.mark.crosscheck
@pytest.mark.parametrize("s", [1, 2])
def test_conv_pool_relu_match_pytorch(on_backend, rng, s):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 8, 8))
    conv = Conv2D(3, 5, stride=s, rng=rng).astype(np.float64)
    conv.bias.data[:] = rng.standard_normal(5)
    model = Sequential(conv, ReLU(), MaxPool2D())
    model, xd = to_backend(model, x)
    out = model.forward(xd)
    g = rng.standard_normal(out.shape)
    dx = mv.asnumpy(model.backward(mv.to_device(g)))

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(mv.asnumpy(conv.weight.data), requires_grad=True)
    bt = torch.tensor(mv.asnumpy(conv.bias.data), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(
        torch.relu(torch.nn.functional.conv2d(xt, wt, bt, stride=s, padding=1)), 2)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(mv.asnumpy(out), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mv.asnumpy(conv.weight.grad), wt.grad.numpy(), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(mv.asnumpy(conv.bias.grad), bt.grad.numpy(), rtol=1e-10,
                               atol=1e-12)
