"""The kernels: the only code that differs per backend, behind one public function each.

    from minivgg import kernels
    cols = kernels.im2col(x, 3, 3, stride=1, pad=1)       # NumPy or CuPy, float32 or float64

Files, from the outside in:

    api.py          the public functions: checks, output sizes, allocation, NCHW views
    batch_norm.py   the same for batch norm's statistics, normalisation and backward
    dispatch.py     which implementation computes an array (by the array, and one setting)
    reference.py    the specification in plain NumPy: what lessons read, tests compare with
    cpu.py          the same loops in Numba (NHWC memory)      winograd_cpu.py  its Winograd
    gpu.py          the same loops in CUDA through CuPy        winograd.py      reference one
    blas.py         GEMMs on the CPU, shared out among threads
    gpu_channels.py per-channel sums (cuBLAS) and batch norm on the GPU, in NHWC
    probe.py        can CuPy run here? each missing piece named, with its fix
    layout.py       NCHW views of NHWC memory; elementwise kernels in memory order
    checks.py       argument checks, so no compiled loop runs outside its arrays
    workspace.py    reusable scratch buffers (Workspace, thread_workspace)

Every function takes and returns *logically* NCHW arrays with the reference's shapes,
dtypes and values; the fast implementations may return NCHW views of NHWC memory.
Supported dtypes are float32 and float64 on every implementation.
"""

from minivgg.kernels.api import (
    channel_sums,
    col2im,
    im2col,
    im2col_planes,
    matmul,
    maxpool_backward,
    maxpool_forward,
    relu_backward,
    relu_forward,
    winograd_conv_backward,
    winograd_conv_forward,
)
from minivgg.kernels.batch_norm import (
    batchnorm_backward,
    batchnorm_normalize,
    batchnorm_statistics,
    fuses_bn_relu,
)
from minivgg.kernels.checks import FLOAT_DTYPES
from minivgg.kernels.dispatch import (
    WINOGRAD_MIN_CHANNELS,
    im2col_by_planes,
    implementation,
    winograd_implementation,
    winograd_preferred,
)
from minivgg.kernels.reference import conv_output_size
from minivgg.kernels.workspace import (
    COLUMN_BUDGET_BYTES,
    Workspace,
    column_budget,
    images_per_chunk,
    set_column_budget,
    thread_workspace,
)

__all__ = ["im2col", "im2col_planes", "col2im", "channel_sums", "maxpool_forward",
           "maxpool_backward",
           "relu_forward", "relu_backward", "matmul", "batchnorm_statistics",
           "batchnorm_normalize", "batchnorm_backward", "fuses_bn_relu", "winograd_conv_forward",
           "winograd_conv_backward", "conv_output_size", "implementation",
           "winograd_implementation", "winograd_preferred", "im2col_by_planes",
           "WINOGRAD_MIN_CHANNELS",
           "FLOAT_DTYPES", "Workspace", "thread_workspace", "COLUMN_BUDGET_BYTES",
           "column_budget", "set_column_budget", "images_per_chunk"]
