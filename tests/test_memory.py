"""The inference memory estimate and the evaluation batch it sizes (minivgg/memory.py)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import minivgg as mv
from minivgg import backend, kernels
from minivgg.memory import CONTEXT_BYTES, HEADROOM, fit_eval_batch, inference_bytes
from minivgg.models import vgg
from minivgg.modes import no_grad

VGG16_PARAMETERS = 138_357_544


@pytest.fixture(autouse=True)
def _restore_backend():
    saved = backend._cpu_kernels, backend._device
    yield
    backend._cpu_kernels, backend._device = saved


def fixed_bytes(model):
    return sum(p.data.nbytes for p in model.parameters()) + sum(
        b.nbytes for b in model.named_buffers().values())


@pytest.mark.parametrize("cpu_kernels", ["numpy", "numba"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_the_estimate_bounds_what_inference_really_allocates(cpu_kernels, batch_norm):
    """NumPy reports its allocations to tracemalloc: the peak of a forward pass under
    no_grad (parameters aside) stays below the estimate, and the estimate is not loose by
    more than a small factor."""
    mv.set_cpu_kernels(cpu_kernels)
    model = vgg("A", 10, 32, head="cifar", width=0.25, batch_norm=batch_norm, seed=0)
    model.eval()
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    with no_grad():
        model.forward(x[:1])                     # Numba compiled before measuring
    kernels.thread_workspace().clear()
    tracemalloc.start()
    try:
        with no_grad():
            model.forward(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = inference_bytes(model, (3, 32, 32), 8, "cpu") - fixed_bytes(model)
    assert peak <= estimate <= 6 * peak, (peak, estimate)


def test_vgg16_at_224_evaluates_within_a_24_gb_card():
    """Built with a small classifier (the sizing depends on the activations; the real
    classifier's 0.5 GB of weights are added to the reserve)."""
    model = vgg("D", 1000, 224, fc_width=64, seed=0)
    missing = (VGG16_PARAMETERS - sum(p.data.size for p in model.parameters())) * 4
    card = 24 * 10**9
    batch = fit_eval_batch(model, (3, 224, 224), card, requested=500,
                           reserve=CONTEXT_BYTES + missing)
    limit = HEADROOM * card - CONTEXT_BYTES
    assert 100 <= batch < 500
    assert inference_bytes(model, (3, 224, 224), batch, "gpu") + missing <= limit
    assert inference_bytes(model, (3, 224, 224), batch + 1, "gpu") + missing > limit
    assert fit_eval_batch(model, (3, 224, 224), card, requested=64) == 64
    assert fit_eval_batch(model, (3, 224, 224), 10**9, requested=500) == 1   # never 0
    per_image = (inference_bytes(model, (3, 224, 224), 101, "gpu")
                 - inference_bytes(model, (3, 224, 224), 100, "gpu"))
    assert 35e6 < per_image < 45e6               # conv1_2: its input, output and a temporary


def test_fit_eval_batch_refuses_a_batch_below_one():
    model = vgg("A", 10, 32, head="cifar", width=0.25, seed=0)
    with pytest.raises(ValueError, match="fit_eval_batch: requested must be >= 1"):
        fit_eval_batch(model, (3, 32, 32), 10**9, requested=0)


def test_a_run_on_the_gpu_evaluates_in_batches_the_device_holds(monkeypatch):
    """run.eval_batch_size: the configured batch on the CPU; on the GPU capped by the
    estimate for the device's memory (a small card is stood in for)."""
    import types

    from minivgg import memory
    from minivgg.run import eval_batch_size
    model = vgg("A", 10, 32, head="cifar", width=0.25, seed=0)
    run = types.SimpleNamespace(config={"eval_batch_size": 500, "input_size": 32},
                                device="cpu", model=model, image_shape=(3, 32, 32))
    assert eval_batch_size(run) == 500
    card = int(1.3 * 2**30)
    monkeypatch.setattr(memory, "device_memory_bytes", lambda: card)
    run.device = "gpu"
    batch = eval_batch_size(run)
    assert 1 <= batch < 500
    assert inference_bytes(model, (3, 32, 32), batch, "gpu") <= HEADROOM * card - CONTEXT_BYTES


def test_a_smaller_budget_lowers_the_estimate_and_the_real_peak():
    """With the Numba kernels (Winograd) a budget below the batch's tiles chunks them: the
    estimate falls, and so does what NumPy really allocates (tracemalloc)."""
    mv.set_cpu_kernels("numba")
    model = vgg("A", 10, 32, head="cifar", width=0.5, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    with no_grad():
        model.forward(x[:1])
    saved = kernels.column_budget()
    peaks, estimates = [], []
    try:
        for budget in (saved, 256 << 10):
            kernels.set_column_budget(budget)
            kernels.thread_workspace().clear()
            tracemalloc.start()
            with no_grad():
                model.forward(x)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            estimates.append(inference_bytes(model, (3, 32, 32), 16, "cpu") - fixed_bytes(model))
    finally:
        kernels.set_column_budget(saved)
    assert peaks[1] < 0.8 * peaks[0] and estimates[1] < estimates[0]
    assert all(p <= e for p, e in zip(peaks, estimates)), (peaks, estimates)
