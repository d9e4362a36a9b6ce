"""Argument checks for the kernels: what api.py verifies before any compiled loop runs.

The Numba and CUDA loops index raw memory and trust their arguments: a gradient of the
wrong shape would make them read and write outside their arrays (a corrupted heap, a crash
far from the cause). So every public kernel checks, in Python, before it calls a loop:
dtypes, shapes against the shapes the forward pass produced, devices, ``out=`` buffers.
Each error names the kernel, what it got and what it expected.
"""

from __future__ import annotations

import numpy as np

from minivgg.backend import device_of, is_cupy_array
from minivgg.kernels.reference import conv_output_size

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _describe(a) -> str:
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        return type(a).__name__
    return f"a {a.dtype} {device_of(a)} array of shape {tuple(a.shape)}"


def floats(who: str, name: str, a, ndim: int | None = None) -> None:
    """``a`` is a float32 or float64 array (of rank ``ndim`` if given)."""
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(f"{who}: {name} must be an array, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{who}: {name} has dtype {a.dtype}; the kernels support float32 "
                        f"and float64")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{who}: {name} must be {ndim}-D, got shape {tuple(a.shape)}")


def integers(who: str, name: str, a) -> None:
    """``a`` is an integer array (max-pool's argmax)."""
    if not hasattr(a, "dtype") or a.dtype.kind not in "iu":
        raise TypeError(f"{who}: {name} must be an integer array, got {_describe(a)}")


def booleans(who: str, name: str, a) -> None:
    """``a`` is a boolean array (ReLU's mask)."""
    if not hasattr(a, "dtype") or a.dtype != np.bool_:
        raise TypeError(f"{who}: {name} must be a boolean array, got {_describe(a)}")


def same_dtype(who: str, **arrays) -> None:
    """All of ``arrays`` have one dtype (the kernels never mix float32 and float64)."""
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        got = ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"{who}: expected one dtype for all arrays, got {got}")


def same_device(who: str, **arrays) -> None:
    """All of ``arrays`` live on one device (all NumPy or all CuPy)."""
    devices = {name: device_of(a) for name, a in arrays.items()}
    if len(set(devices.values())) > 1:
        got = ", ".join(f"{name} on the {device}" for name, device in devices.items())
        raise ValueError(f"{who}: expected all arrays on one device, got {got}")


def shape(who: str, name: str, a, expected, why: str = "") -> None:
    """``a.shape == expected``; ``why`` says where the expected shape comes from."""
    if tuple(a.shape) != tuple(expected):
        why = f" ({why})" if why else ""
        raise ValueError(f"{who}: expected {name} of shape {tuple(expected)}{why}, "
                         f"got shape {tuple(a.shape)}")


def sizes(who: str, lower: int = 1, **values) -> None:
    """Each value is an int >= ``lower`` (1 for kernel sizes and strides, 0 for padding)."""
    for name, v in values.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lower:
            raise ValueError(f"{who}: {name} must be an int >= {lower}, got {v!r}")


def image_shape(who: str, x_shape) -> tuple[int, int, int, int]:
    """``x_shape`` is (N, C, H, W) of non-negative ints; returned as a tuple of ints."""
    try:
        dims = tuple(int(d) for d in x_shape)
        valid = len(dims) == 4 and all(d >= 0 and d == e for d, e in zip(dims, x_shape))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"{who}: x_shape must be 4 non-negative ints (N, C, H, W), "
                         f"got {x_shape!r}")
    return dims


def output_size(who: str, hw, kh: int, kw: int, stride: int, pad: int) -> tuple[int, int]:
    """(OH, OW) of a kh x kw window over an H x W image: the floor rule, at least 1 each."""
    sizes(who, kh=kh, kw=kw, stride=stride)
    sizes(who, 0, pad=pad)
    h, w = hw
    oh, ow = conv_output_size(h, kh, stride, pad), conv_output_size(w, kw, stride, pad)
    if oh < 1 or ow < 1:
        raise ValueError(f"{who}: a {kh}x{kw} window does not fit the {h + 2 * pad}x"
                         f"{w + 2 * pad} input (image {h}x{w}, padding {pad})")
    return oh, ow


def out_buffer(who: str, out, expected_shape, dtype, like) -> None:
    """``out`` is a C-contiguous ``dtype`` array of ``expected_shape`` on the device of ``like``."""
    ok = (hasattr(out, "shape") and hasattr(out, "flags") and is_cupy_array(out) ==
          is_cupy_array(like) and tuple(out.shape) == tuple(expected_shape)
          and out.dtype == dtype and out.flags.c_contiguous)
    if not ok:
        layout = "" if not hasattr(out, "flags") or out.flags.c_contiguous else " (strided)"
        raise ValueError(f"{who}: out must be a C-contiguous {np.dtype(dtype)} "
                         f"{device_of(like)} array of shape {tuple(expected_shape)}, "
                         f"got {_describe(out)}{layout}")
