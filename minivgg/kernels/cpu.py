"""Numba kernels for the CPU (placeholder until the Numba kernels land: uses the reference)."""

from minivgg.kernels.reference import col2im, im2col, maxpool_backward, maxpool_forward

__all__ = ["im2col", "col2im", "maxpool_forward", "maxpool_backward"]
