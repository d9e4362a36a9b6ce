"""How much memory inference needs, and the largest evaluation batch a device holds.

Evaluation runs without gradients (``no_grad``): a layer's input is let go once its output
exists, so what is alive at any moment is the batch itself, one layer's input and output
and that layer's temporaries, the parameters, and the scratch shared by all layers (the
im2col columns, bounded by the column budget; Winograd's tiles on the CPU). This module
adds those up from the layers' output shapes, per layer, and takes the largest:

    per image   input + max over layers of (layer input + 2 x layer output)
                (2 x: the output and a temporary as large -- ReLU's mask, the pooling
                argmax, a copy to NHWC; 4 x for local response normalisation)
    per batch   + parameters and buffers + the largest column matrix (<= the budget)
                + Winograd's input and output tiles and filter transforms (CPU only)

The scratch buffers are the thread's (kernels/workspace.py): each grows to the largest
size any layer asks for and stays, so the largest of each kind is held at once.

The NumPy reference kernels (the readable ones) hold more: their im2col builds the rows in
two temporaries before copying them into the buffer, and batch norm's expressions keep a
temporary per operation, so for them it is 3 x the columns and 3 x each layer's output.

It is an upper estimate (tests check it against what NumPy really allocates), so a batch
it accepts fits. ``fit_eval_batch`` turns it round: the largest batch, up to the one asked
for, whose estimate stays within a fraction of the device's memory. VGG-16 at 224x224
needs about 39 MB per image, so a 24 GB card evaluates batches of ~420, not 500.
"""

from __future__ import annotations

import math

import numpy as np

from minivgg import kernels
from minivgg.backend import get_cpu_kernels
from minivgg.kernels.winograd import tile_size, tile_values
from minivgg.layers import Conv2D, LocalResponseNorm

HEADROOM = 0.8                  # of the device's memory: the rest for the allocator's slack
CONTEXT_BYTES = 1 << 30         # the CUDA context, cuBLAS workspaces, the loader's next batch


def _layers(model):
    return [layer for _, layer in model.named_layers()] if hasattr(model, "named_layers") \
        else [model]


def inference_bytes(model, input_shape, batch: int, device: str = "cpu") -> int:
    """Estimated peak bytes of ``model.forward`` under ``no_grad`` for ``batch`` images of
    ``input_shape`` (C, H, W) on ``device`` ("cpu" or "gpu")."""
    params = model.parameters()
    dtype = params[0].data.dtype if params else np.dtype(np.float32)
    size = np.dtype(dtype).itemsize
    fixed = sum(p.data.nbytes for p in params) + sum(
        b.nbytes for layer in _layers(model) for b in layer.named_buffers().values())
    shape = tuple(int(s) for s in input_shape)
    per_image, columns = math.prod(shape), 0
    tiles_in = tiles_out = filters = 0      # Winograd's V, M and U: one buffer each, shared
    widest = 0
    readable = device == "cpu" and get_cpu_kernels() == "numpy"
    for layer in _layers(model):
        out = tuple(layer.output_shape(shape))
        factor = 4 if isinstance(layer, LocalResponseNorm) else 3 if readable else 2
        widest = max(widest, math.prod(shape) + factor * math.prod(out))
        if isinstance(layer, Conv2D):
            c, h, w = shape
            probe = np.empty((0, c, h, w), dtype=dtype)
            if device == "cpu" and layer.uses_winograd(probe):
                m = tile_size(h, w)
                values, f = tile_values(h, w, m), layer.out_channels
                chunk = kernels.images_per_chunk(batch, values * (c + f) * size)
                tiles_in = max(tiles_in, values * c * chunk * size)
                tiles_out = max(tiles_out, values * f * chunk * size)
                filters = max(filters, (m + 2) ** 2 * c * f * size)
            else:
                one = out[1] * out[2] * c * layer.kernel_size ** 2 * size
                columns = max(columns, one * kernels.images_per_chunk(batch, one))
        shape = out
    return (fixed + batch * (per_image + widest) * size + columns * (3 if readable else 1)
            + tiles_in + tiles_out + filters)


def fit_eval_batch(model, input_shape, device_bytes: int, requested: int,
                   device: str = "gpu", headroom: float = HEADROOM,
                   reserve: int = CONTEXT_BYTES) -> int:
    """The largest batch <= ``requested`` whose ``inference_bytes`` fits
    ``headroom * device_bytes - reserve`` (at least 1: a model that does not fit one image
    fails on its own, with the allocator's message)."""
    if requested < 1:
        raise ValueError(f"fit_eval_batch: requested must be >= 1, got {requested}")
    limit = headroom * device_bytes - reserve
    lo, hi = 1, requested                       # the estimate grows with the batch
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if inference_bytes(model, input_shape, mid, device) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def device_memory_bytes() -> int:
    """Total memory of the current CUDA device (CuPy must run here)."""
    import cupy
    return int(cupy.cuda.Device().mem_info[1])
