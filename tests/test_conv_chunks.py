"""Bounded im2col memory: a batch whose column matrix exceeds the budget is convolved in
chunks of images, with the same results, forward and backward (layers/conv.py)."""

from __future__ import annotations

import types

import numpy as np
import pytest

import minivgg as mv
from minivgg import backend, kernels
from minivgg.layers import Conv2D
from minivgg.modes import no_grad


@pytest.fixture(autouse=True)
def _restore():
    saved = backend._cpu_kernels, backend._device, kernels.column_budget()
    yield
    backend._cpu_kernels, backend._device = saved[:2]
    kernels.set_column_budget(saved[2])


def run(conv, x, dout):
    y = conv.forward(x)
    algorithm = conv.cache.algorithm
    dx = conv.backward(dout)
    return y, dx, conv.weight.grad.copy(), conv.bias.grad.copy(), algorithm


@pytest.mark.parametrize("cpu_kernels", ["numpy", "numba"])
@pytest.mark.parametrize("k, s, p", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (5, 2, 2)])
@pytest.mark.parametrize("images_per_chunk", [1, 2, 3])
def test_chunked_equals_unchunked(cpu_kernels, k, s, p, images_per_chunk):
    mv.set_cpu_kernels(cpu_kernels)
    rng = np.random.default_rng(k * 10 + s)
    conv = Conv2D(4, 5, k, s, p, rng=rng, dtype=np.float64, algorithm="im2col")
    x = np.ascontiguousarray(rng.standard_normal((7, 6, 6, 4))).transpose(0, 3, 1, 2)  # NHWC
    dout = rng.standard_normal((7,) + conv.output_shape(x.shape[1:]))
    whole = run(conv, x, dout)
    _, oh, ow = conv.output_shape(x.shape[1:])
    one_image = oh * ow * 4 * k * k * 8
    kernels.set_column_budget(images_per_chunk * one_image + one_image // 2)
    assert conv.images_per_chunk(x) == images_per_chunk
    chunked = run(conv, x, dout)
    assert whole[-1] == "im2col" and chunked[-1] == "im2col-chunked"
    for a, b in zip(whole[:4], chunked[:4]):
        np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-13)
    assert chunked[1].transpose(0, 2, 3, 1).flags.c_contiguous          # dx stays NHWC
    conv.input_grad = False
    assert conv.forward(x) is not None and conv.backward(dout) is None


def test_the_column_matrix_stays_within_the_budget(rng):
    """What a chunked layer holds: x, not its columns; scratch of one chunk in the thread's
    workspace, shared by all layers, in training and in inference alike."""
    mv.set_cpu_kernels("numpy")
    a, b = Conv2D(3, 8, rng=rng, algorithm="im2col"), Conv2D(8, 8, rng=rng, algorithm="im2col")
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    budget = 8 * 8 * 8 * 9 * 4 * 3                 # three images of b's columns
    kernels.set_column_budget(budget)
    kernels.thread_workspace().clear()
    y = b.forward(a.forward(x))
    assert a._workspace.nbytes == b._workspace.nbytes == 0
    assert b.cache.algorithm == "im2col-chunked" and b.cache.buffer.shape == (16, 8, 8, 8)
    assert kernels.thread_workspace().nbytes <= budget
    a.backward(b.backward(np.ones_like(y)))
    assert kernels.thread_workspace().nbytes <= budget
    with no_grad():
        np.testing.assert_allclose(b.forward(a.forward(x)), y, rtol=1e-6)
    assert kernels.thread_workspace().nbytes <= budget


def test_images_per_chunk_and_the_budget_setting():
    kernels.set_column_budget(1000)
    assert kernels.images_per_chunk(10, 300) == 3
    assert kernels.images_per_chunk(2, 300) == 2
    assert kernels.images_per_chunk(10, 5000) == 1        # one image never splits
    assert kernels.set_column_budget(1 << 30) == 1000
    with pytest.raises(ValueError, match="set_column_budget: expected a positive number"):
        kernels.set_column_budget(0)


def test_vgg16_conv1_2_at_224_would_need_58_gb_and_now_takes_the_budget():
    conv = Conv2D(64, 64)
    x = types.SimpleNamespace(shape=(500, 64, 224, 224), dtype=np.dtype(np.float32))
    per_image = 224 * 224 * 64 * 9 * 4
    assert 500 * per_image == pytest.approx(57.8e9, rel=1e-3)
    assert conv.images_per_chunk(x) == kernels.COLUMN_BUDGET_BYTES // per_image == 9


def test_winograd_inference_in_chunks_equals_the_whole_batch(rng):
    """Under no_grad Winograd's tiles (V, and the output tiles M) are built a chunk of
    images at a time when they exceed the budget: same result, less scratch."""
    mv.set_cpu_kernels("numba")
    conv = Conv2D(16, 8, rng=rng, algorithm="winograd")
    x = np.ascontiguousarray(rng.standard_normal((5, 6, 6, 16)).astype(np.float32))
    x = x.transpose(0, 3, 1, 2)
    with no_grad():
        whole = conv.forward(x)
    per_image = 16 * 3 * 3 * (16 + 8) * 4
    kernels.set_column_budget(2 * per_image)
    kernels.thread_workspace().clear()
    with no_grad():
        chunked = conv.forward(x)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)   # GEMMs of other sizes
    assert chunked.transpose(0, 2, 3, 1).flags.c_contiguous
    scratch = sum(b.nbytes for k, b in kernels.thread_workspace()._buffers.items()
                  if k in ("conv2d-tiles", "winograd.M"))
    assert scratch <= 2 * per_image
    kernels.set_column_budget(1 << 30)
    conv.forward(x)                           # training within the budget keeps whole tiles
    assert conv.cache.algorithm == "winograd" and conv.cache.buffer.shape[1] == 5 * 9


def test_inference_chunks_take_the_smaller_budget():
    previous = kernels.set_column_budget(1 << 30)
    try:
        per_image = 30 << 20                                   # 30 MiB of columns an image
        assert kernels.images_per_chunk(8, per_image) == 8                 # training: 1 GiB
        assert kernels.images_per_chunk(8, per_image, inference=True) == 4  # 128 MiB
        kernels.set_column_budget(64 << 20)                   # a smaller budget still wins
        assert kernels.images_per_chunk(8, per_image, inference=True) == 2
    finally:
        kernels.set_column_budget(previous)


@pytest.mark.parametrize("algorithm", ["winograd", "auto"])
def test_winograd_training_over_the_budget_takes_chunked_im2col(algorithm):
    """Winograd's backward needs every tile of the batch, so training a batch whose tiles
    exceed the budget falls back to chunked im2col; the gradients are the same."""
    mv.set_cpu_kernels("numba")
    rng = np.random.default_rng(4)
    conv = Conv2D(16, 16, rng=rng, dtype=np.float64, algorithm=algorithm)
    x = rng.standard_normal((6, 16, 8, 8))
    dout = rng.standard_normal((6, 16, 8, 8))
    whole = run(conv, x, dout)
    assert whole[-1] == "winograd"
    kernels.set_column_budget(2 * conv._winograd_bytes_per_image(x))
    assert not conv.uses_winograd(x)
    chunked = run(conv, x, dout)
    assert chunked[-1] == "im2col-chunked"
    for a, b in zip(whole[:4], chunked[:4]):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)
    with no_grad():                                   # inference chunks Winograd itself
        assert conv.uses_winograd(x)
