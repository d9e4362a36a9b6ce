"""Which implementation computes an array: decided per call, from the array itself.

    CuPy array                               -> gpu.py        (CUDA kernels)
    NumPy array, get_cpu_kernels() "numba"   -> cpu.py        (Numba loops)
    NumPy array, get_cpu_kernels() "numpy"   -> reference.py  (the readable specification)

Winograd convolution has its own pair: winograd.py (reference) and winograd_cpu.py (Numba);
there is none for CUDA. Modules are compared by identity (``is``), never by name.
"""

from __future__ import annotations

from minivgg.backend import get_cpu_kernels, is_cupy_array
from minivgg.kernels import gpu, reference, winograd  # gpu.py imports without CuPy

WINOGRAD_MIN_CHANNELS = 16


def _numba_kernels():
    """cpu.py, imported on first use (importing Numba takes a moment)."""
    from minivgg.kernels import cpu
    return cpu


def implementation(x):
    """The kernel module that computes array ``x``: gpu, cpu or reference."""
    if is_cupy_array(x):
        return gpu
    if get_cpu_kernels() == "numba":
        return _numba_kernels()
    return reference


def winograd_implementation(x):
    """The Winograd module for ``x``: winograd (reference) or winograd_cpu (Numba)."""
    impl = implementation(x)
    if impl is reference:
        return winograd
    if impl is _numba_kernels():
        from minivgg.kernels import winograd_cpu
        return winograd_cpu
    raise NotImplementedError("Winograd convolution: implemented for NumPy arrays (CPU kernels "
                              "'numpy' and 'numba'), got a CuPy array; use "
                              "Conv2D(algorithm='im2col') on the GPU")


def winograd_preferred(x) -> bool:
    """What Conv2D(algorithm="auto") picks for ``x`` where Winograd applies (3x3, s1, p1).

    True with the Numba kernels for inputs of at least 16 channels: faster there on the
    benchmark (benchmarks/results/). With 3 channels (a network's first layer) the GEMM is
    too small for the savings to pay for the transforms, and im2col stays faster. The NumPy
    reference stays the readable im2col specification; CUDA has no Winograd kernels.
    """
    impl = implementation(x)
    if impl is reference or impl is gpu:
        return False
    return impl is _numba_kernels() and x.shape[1] >= WINOGRAD_MIN_CHANNELS


PLANES_MAX_CHANNELS = 7


def im2col_by_planes(x) -> bool:
    """Whether Conv2D writes the columns of ``x`` as im2col_planes (transposed) rather than
    as im2col's rows: with the Numba kernels, for inputs of at most 7 channels (an RGB or
    grey image, a network's first layer). A row of such a layer holds few values from
    scattered places (27 for 3 channels), written one at a time; the transposed matrix is
    written a whole image row at a time, several times faster (benchmarks/results/), and
    the GEMMs read it as fast. The reference and CUDA build rows, as the lessons teach.
    """
    return implementation(x) is _numba_kernels() and x.shape[1] <= PLANES_MAX_CHANNELS
