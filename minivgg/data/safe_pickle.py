"""Loading a pickle without letting it run code.

A pickle is a small program: its GLOBAL opcode imports any callable by name and REDUCE
calls it, so ``pickle.load`` on a hostile file can run ``os.system``. The CIFAR files need
only three globals, all to rebuild NumPy arrays:

    numpy.core.multiarray._reconstruct   make an empty ndarray
    numpy.ndarray                        the class passed to it
    numpy.dtype                          the element type (uint8 for CIFAR)

Everything else they hold (dicts, lists, ints, byte strings) is built by opcodes that call
nothing. ``RestrictedUnpickler.find_class`` hands out those three and refuses every other
name, so loading an untrusted file can fail but never execute anything.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

try:  # NumPy 2 renamed numpy.core to numpy._core; old pickles still name numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


def _reconstruct(cls, shape, typecode):
    """numpy's _reconstruct, for plain ndarrays only (a subclass could carry code)."""
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to build an array of class {cls!r}; "
                                     "only numpy.ndarray is allowed")
    return _np_reconstruct(cls, shape, typecode)


def _dtype(*args):
    """np.dtype, refusing object dtypes (their elements would be unpickled as objects)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing object dtype {dtype}; only plain numeric "
                                     "dtypes are allowed")
    return dtype


ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle.Unpickler that resolves only the globals in ALLOWED_GLOBALS."""

    def find_class(self, module: str, name: str):
        if module == "numpy.core" or module.startswith("numpy.core."):
            module = "numpy._core" + module[len("numpy.core"):]
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: this file asks for code that a "
                "data file never needs (only NumPy arrays and plain containers are allowed)"
            ) from None


def restricted_loads(data: bytes, encoding: str = "bytes"):
    """Unpickle ``data`` allowing only NumPy arrays and plain containers.

    ``encoding="bytes"`` because the CIFAR files were written by Python 2: their str
    values (dict keys included) come back as bytes.
    """
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def restricted_load(path, encoding: str = "bytes"):
    """Unpickle the file at ``path``; see restricted_loads."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, encoding=encoding).load()
