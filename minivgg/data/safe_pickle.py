"""Loading a pickle without letting it run code or take all the memory.

A pickle is a small program: its GLOBAL opcode imports any callable by name and REDUCE
calls it, so ``pickle.load`` on a hostile file can run ``os.system``. The CIFAR files need
only three globals, all to rebuild NumPy arrays:

    numpy.core.multiarray._reconstruct   make an empty ndarray
    numpy.ndarray                        the class passed to it
    numpy.dtype                          the element type (uint8 for CIFAR)

Everything else they hold (dicts, lists, ints, byte strings) is built by opcodes that call
nothing. ``RestrictedUnpickler.find_class`` hands out those three and refuses every other
name, so loading an untrusted file can fail but never execute anything.

Memory is bounded too. NumPy's own pickles make an empty array and then fill it from a
byte string in the file, so an honest array never needs more bytes than the file holds.
A hostile one can instead ask for ``numpy.ndarray((300000, 3072), 'u1')`` (0.9 GB from an
89-byte file) or declare a 60 GB byte string: calling ``numpy.ndarray`` is refused,
``_reconstruct`` gets a byte budget (the stream's length unless the caller gives less), and
the opcodes are read once by ``pickletools`` before anything is built, so a declared
length that runs past the end of the stream is refused without being allocated.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from math import prod

import numpy as np

from minivgg.data.dataset import REFETCH_HINT, CorruptDataError

try:  # NumPy 2 renamed numpy.core to numpy._core; old pickles still name numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


class RefusedPickleError(CorruptDataError, pickle.UnpicklingError):
    """A pickle restricted_load will not build: it asks for code, declares more data than
    it holds, or is damaged. The message names the file (or "pickle data")."""


class _Refusal(Exception):
    """Raised inside the unpickler; restricted_loads adds the source and the advice."""


class _ArrayClass:
    """Stands for numpy.ndarray: it may be passed to _reconstruct, never called.

    NumPy's pickles only pass the class along; calling it would allocate whatever shape
    the file names, filled with nothing from the file.
    """

    def __call__(self, *args, **kwargs):
        raise _Refusal(f"refusing to call numpy.ndarray{args!r} directly: NumPy's own "
                       "pickles never do, and it would allocate memory the file does not fill")

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _ArrayClass()


class _GuardedArray(np.ndarray):
    """What _reconstruct makes: an ndarray whose BUILD first checks the dtype it is given.

    A dtype's own BUILD state carries flags, so a file can build a uint8 dtype that claims
    to hold objects; given to ``ndarray.__setstate__`` it would make an array NumPy cannot
    even free cleanly. restricted_loads turns these back into plain ndarrays.
    """

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5 or not isinstance(state[2], np.dtype):
            raise _Refusal(f"an array's state is {type(state).__name__}, not NumPy's "
                           "(version, shape, dtype, is_fortran, data)")
        if state[2].hasobject:
            raise _Refusal(f"refusing an array whose dtype {state[2]} holds (or claims to "
                           "hold) Python objects")
        super().__setstate__(state)


def _dtype(*args):
    """np.dtype, refusing object dtypes (their elements would be unpickled as objects)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise _Refusal(f"refusing object dtype {dtype}; only plain numeric dtypes are allowed")
    return dtype


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle.Unpickler that resolves only NumPy's array-building globals and lets the
    arrays it makes total at most ``max_bytes`` before they are filled."""

    def __init__(self, file, *, encoding: str = "bytes", max_bytes: int):
        super().__init__(file, encoding=encoding)
        self.budget = max_bytes
        self.allowed = {("numpy._core.multiarray", "_reconstruct"): self._reconstruct,
                        ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _dtype}

    def find_class(self, module: str, name: str):
        if module == "numpy.core" or module.startswith("numpy.core."):
            module = "numpy._core" + module[len("numpy.core"):]
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise _Refusal(f"refusing to load global {module}.{name}: this file asks for code "
                           "that a data file never needs (only NumPy arrays and plain "
                           "containers are allowed)") from None

    def _reconstruct(self, cls, shape, typecode):
        """numpy's _reconstruct, for plain ndarrays within the byte budget only."""
        if cls is not _NDARRAY:
            raise _Refusal(f"refusing to build an array of class {cls!r}; only numpy.ndarray "
                           "is allowed")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _Refusal(f"array shape {shape!r} is not a tuple of sizes >= 0")
        itemsize = _dtype(typecode.decode() if isinstance(typecode, bytes) else typecode
                          ).itemsize
        nbytes = prod(shape) * itemsize
        if nbytes > self.budget:
            raise _Refusal(f"an array of shape {shape} ({nbytes} bytes) is larger than the "
                           f"{self.budget} bytes left for arrays in this file")
        self.budget -= nbytes
        return _np_reconstruct(_GuardedArray, shape, typecode)


# What a damaged stream or odd arguments to the allowed calls raise inside pickle.load.
_DAMAGE = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
           IndexError, KeyError, OverflowError, MemoryError, RecursionError)


def _scan(data: bytes) -> None:
    """Walk the opcodes without building anything: a truncated stream, a declared length
    past its end, or bytes after the final STOP are found here, before any allocation."""
    stream = io.BytesIO(data)
    for _ in pickletools.genops(stream):
        pass
    if stream.tell() != len(data):
        raise _Refusal(f"{len(data) - stream.tell()} stray bytes follow the end of the pickle")


def _plain(obj):
    """``obj`` with every _GuardedArray inside its dicts, lists and tuples replaced by a
    plain ndarray view (memo references may make cycles: each container is seen once)."""
    seen: dict[int, object] = {}

    def convert(item):
        if isinstance(item, np.ndarray):
            return item.view(np.ndarray)
        if id(item) in seen:
            return seen[id(item)]
        if isinstance(item, dict):
            seen[id(item)] = item
            for key in list(item):
                item[key] = convert(item[key])
        elif isinstance(item, list):
            seen[id(item)] = item
            item[:] = [convert(v) for v in item]
        elif isinstance(item, tuple):
            seen[id(item)] = item  # a tuple holding itself is impossible; this stops revisits
            item = seen[id(item)] = tuple(convert(v) for v in item)
        return item

    return convert(obj)


def restricted_loads(data: bytes, encoding: str = "bytes", max_bytes: int | None = None,
                     source: str = "pickle data"):
    """Unpickle ``data`` allowing only NumPy arrays and plain containers.

    ``encoding="bytes"`` because the CIFAR files were written by Python 2: their str
    values (dict keys included) come back as bytes. ``max_bytes`` caps the arrays' total
    size (default: ``len(data)``, all an honest pickle can fill). Every refusal raises
    RefusedPickleError naming ``source``.
    """
    budget = len(data) if max_bytes is None else min(max_bytes, len(data))
    try:
        _scan(data)
        return _plain(RestrictedUnpickler(io.BytesIO(data), encoding=encoding,
                                          max_bytes=budget).load())
    except _Refusal as exc:
        raise RefusedPickleError(f"{source}: {exc}. {REFETCH_HINT}") from None
    except _DAMAGE as exc:
        raise RefusedPickleError(f"{source} is damaged or not a pickle "
                                 f"({type(exc).__name__}: {exc}). {REFETCH_HINT}") from exc


def restricted_load(path, encoding: str = "bytes", max_bytes: int | None = None,
                    max_file_bytes: int | None = None):
    """Unpickle the file at ``path``; see restricted_loads.

    The file is read whole (so the unpickler never asks the file system for a declared
    length), after checking its size against ``max_file_bytes`` when given.
    """
    size = os.path.getsize(path)
    if max_file_bytes is not None and size > max_file_bytes:
        raise RefusedPickleError(f"{path} is {size} bytes, more than the {max_file_bytes} "
                                 f"such a file can hold. {REFETCH_HINT}")
    with open(path, "rb") as f:
        data = f.read()
    return restricted_loads(data, encoding, max_bytes, source=str(path))
