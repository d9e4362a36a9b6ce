"""What must hold for every layer, on every backend: run over the registry in layer_cases.py.

- backward matches centred finite differences (float64) in training and evaluation mode;
- every backend gives the reference's output and gradients;
- a gradient of the wrong shape, a backward without forward, a forward under no_grad and
  an input of the wrong rank each raise an error that names the layer;
- a planted bug in backward (input gradient or a parameter's) is caught by check_layer;
- dtypes are kept (float32 in, float32 out and float32 gradients).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import minivgg as mv
import minivgg.layers
from minivgg import backend
from minivgg.gradcheck import check_layer
from minivgg.layers import Layer
from tests.layer_cases import CASES

BACKENDS = [pytest.param("numpy", id="numpy"), pytest.param("numba", id="numba"),
            pytest.param("cupy", id="cupy", marks=pytest.mark.gpu)]
IDS = [case.id for case in CASES]


@pytest.fixture(params=BACKENDS)
def kernels(request):
    """Run under one backend; yields "cpu" or "gpu", the device to put layer and input on."""
    saved = backend._cpu_kernels, backend._device
    if request.param == "cupy" and backend.cupy_problem() is not None:
        pytest.skip("needs CuPy and a CUDA device")
    mv.set_backend(request.param)
    yield "gpu" if request.param == "cupy" else "cpu"
    backend._cpu_kernels, backend._device = saved


def placed(case, device, seed=0):
    if device not in case.devices:
        pytest.skip(f"{case.id} does not run on the {device}")
    layer, x = case.make(seed)
    return layer.to(device), mv.to_device(x, device)


def test_every_layer_has_a_case():
    classes = {obj for _, obj in inspect.getmembers(minivgg.layers, inspect.isclass)
               if issubclass(obj, Layer) and obj is not Layer}
    covered = {type(case.make()[0]) for case in CASES}
    assert classes - covered == set(), "add a LayerCase to tests/layer_cases.py"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_in_every_mode(case, kernels):
    for training in case.modes:
        layer, x = placed(case, kernels)
        errors = check_layer(layer, x, training=training, tol=case.tol)
        assert max(errors.values()) < case.tol


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backends_agree_with_the_reference(case, kernels):
    def run(device):
        layer, x = placed(case, device, seed=3)
        y = layer.forward(x, training=True)
        dout = mv.to_device(np.random.default_rng(4).standard_normal(y.shape), device)
        dx = layer.backward(dout)
        return [mv.asnumpy(a) for a in (y, dx, *[p.grad for p in layer.parameters()])]

    got = run(kernels)
    mv.set_cpu_kernels("numpy")
    want = run("cpu")
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_wrong_gradient_shape_names_the_layer(case, kernels):
    layer, x = placed(case, kernels)
    y = layer.forward(x, training=True)
    wrong = mv.to_device(np.ones((y.shape[0] + 1,) + tuple(y.shape[1:])), kernels)
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name}.*shape"):
        layer.backward(wrong)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_needs_a_forward_that_kept_its_cache(case, kernels):
    layer, x = placed(case, kernels)
    name = type(layer).__name__
    with pytest.raises(RuntimeError, match=rf"{name}: backward\(\) called before forward"):
        layer.backward(x)
    with mv.no_grad():
        y = layer.forward(x, training=False)
    with pytest.raises(RuntimeError, match=rf"{name}: backward\(\) called before forward"):
        layer.backward(y)
    y = layer.forward(x, training=False)           # evaluation mode, gradients on: works
    assert layer.backward(y).shape == x.shape


@pytest.mark.parametrize("case", [c for c in CASES if c.ndim], ids=[c.id for c in CASES
                                                                     if c.ndim])
def test_wrong_rank_names_the_layer(case):
    layer, x = case.make()
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name}: expected a {case.ndim}-D input"):
        layer.forward(x[None])


def _planted(layer, where: str):
    """Wrap backward so that one result is off by 0.1 %."""
    backward = layer.backward

    def wrong(dout):
        dx = backward(dout)
        if where == "input":
            return dx * 1.001
        layer.parameters()[0].grad[...] *= 1.001
        return dx
    layer.backward = wrong
    return layer


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_planted_bugs_are_caught(case):
    for where in ["input"] + (["parameter"] if case.make()[0].parameters() else []):
        layer, x = case.make()
        with pytest.raises(AssertionError, match="gradient check failed"):
            check_layer(_planted(layer, where), x, training=case.modes[0])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float32_stays_float32(case, kernels):
    layer, x = placed(case, kernels)
    layer.astype(np.float32)
    x = x.astype(np.float32)
    y = layer.forward(x, training=True)
    dx = layer.backward(y.copy())
    assert y.dtype == dx.dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in layer.parameters())


def test_upstream_gradient_never_equals_the_callers_input():
    """With x from default_rng(0) and the default seed 0, g must differ from x: for batch
    norm sum(BN(x) * x) has zero gradient and the check would compare rounding noise."""
    from minivgg.layers import BatchNorm2D
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5))
    errors = check_layer(BatchNorm2D(3).astype(np.float64), x)
    assert max(errors.values()) < 1e-7
