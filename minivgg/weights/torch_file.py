"""Reading PyTorch .pth files with NumPy alone: tensors in, arrays out, nothing run.

``torch.save`` has written two formats (both described in torch/serialization.py):

legacy (torch < 1.6; torchvision's VGG files): five things one after another
    pickle   the magic number 0x1950a86a20f9469cfc6c
    pickle   the protocol version, 1001
    pickle   system information ({"little_endian": True, ...})
    pickle   the object itself, usually an OrderedDict of tensors (see below)
    pickle   the sorted list of storage keys
    then for each key in that order: the element count (int64, little-endian) and the
    storage's raw bytes

zip (torch >= 1.6): a zip archive with one top folder holding
    data.pkl     the object itself
    data/<key>   the raw bytes of each storage
    byteorder    "little" or "big" (absent in older files, which are little-endian)

In both, a tensor is pickled as a call ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, requires_grad, hooks)`` whose storage is a *persistent id*, a tuple
("storage", torch.FloatStorage, key, location, numel) that the pickle leaves to the
reader: the bytes live outside the pickle. A tensor is then the strided view
``storage[offset + sum(i_k * stride_k)]`` over its index (i_0, i_1, ...) < size.

A pickle can import and call anything (``os.system`` included), so ``find_class`` below
hands out only the few names such a file contains -- the rebuild functions (our own
versions, which record what to build), the storage and dtype names (mapped to NumPy
dtypes) and ``collections.OrderedDict`` -- and refuses every other with
UnsafeWeightsError before anything is called.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from minivgg.weights import UnsafeWeightsError, WeightsFileError

# torch/serialization.py: MAGIC_NUMBER and PROTOCOL_VERSION of the legacy format
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> dtype (torch/storage.py _storage_type_to_dtype_map); "bfloat16"
# has no NumPy type: it is the top half of a float32, widened on reading.
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
# torch.<dtype> objects, which _rebuild_tensor_v3 receives beside an untyped storage
TORCH_DTYPES = {"float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                "uint8", "uint16", "uint32", "uint64", "bool"}


class _Dtype:
    """What find_class returns for torch.FloatStorage or torch.float32: just a name."""
    __slots__ = ("name",)  # no __dict__ and no __call__: a pickle can neither call nor BUILD it

    def __init__(self, name: str):
        self.name = name

    def numpy(self) -> np.dtype:
        return np.dtype("<u2" if self.name == "bfloat16" else self.name)


class _Storage:
    """A storage named in the pickle; its bytes are read after the pickle."""
    __slots__ = ("key", "dtype", "numel", "raw")

    def __init__(self, key: str, dtype: _Dtype, numel: int):
        self.key, self.dtype, self.numel, self.raw = key, dtype, numel, None

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.numpy().itemsize


class _TensorRef:
    """A tensor to build once its storage's bytes are known."""
    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage, offset, size, stride, dtype):
        ok = (isinstance(storage, _Storage) and _is_int(offset) and _int_tuple(size)
              and _int_tuple(stride) and len(size) == len(stride) and isinstance(dtype, _Dtype))
        if not ok:
            raise ValueError(f"a tensor record is malformed: storage={storage!r}, "
                                   f"offset={offset!r}, size={size!r}, stride={stride!r}")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.dtype = dtype


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_tuple(t) -> bool:
    return isinstance(t, tuple) and all(_is_int(v) for v in t)


# Our stand-ins for torch/_utils.py's functions, with the same arguments.
def _rebuild_tensor(storage, storage_offset, size, stride):       # torch < 0.4
    return _TensorRef(storage, storage_offset, size, stride, getattr(storage, "dtype", None))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):                      # untyped storage + dtype
    return _TensorRef(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks):      # an nn.Parameter
    if not isinstance(data, _TensorRef):
        raise ValueError(f"a parameter record holds {type(data).__name__}, not a tensor")
    return data


ALLOWED_CALLABLES = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch file's pickles; tensors come back as _TensorRef placeholders."""

    def __init__(self, file, path, storages: dict):
        super().__init__(file, encoding="utf-8")
        self.path, self.storages = path, storages

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_CALLABLES:
            return ALLOWED_CALLABLES[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _Dtype(STORAGE_DTYPES[name])
        if module in ("torch", "torch.storage") and name == "UntypedStorage":
            return _Dtype("uint8")                  # bytes; the tensor brings its dtype
        if module == "torch" and name in TORCH_DTYPES:
            return _Dtype(name)
        raise UnsafeWeightsError(
            f"load_state: {self.path} asks for {module}.{name}; a weights file needs only "
            "torch's tensor and storage names and collections.OrderedDict, so it was refused "
            "before anything in it ran")

    def persistent_load(self, pid):
        # legacy: ("storage", type, key, location, numel, view); zip: the first five
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _Dtype) and isinstance(pid[2], str) and _is_int(pid[4])
                and pid[4] >= 0):
            raise WeightsFileError(f"load_state: {self.path} has a malformed storage "
                                   f"reference {pid!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise WeightsFileError(f"load_state: {self.path} holds a storage view {pid[5]!r};"
                                   " views of storages are not supported")
        _, dtype, key, _location, numel = pid[:5]
        storage = self.storages.setdefault(key, _Storage(key, dtype, numel))
        if (storage.dtype.name, storage.numel) != (dtype.name, numel):
            raise WeightsFileError(f"load_state: {self.path} names storage {key!r} twice with "
                                   "different types or sizes")
        return storage


def _unpickle(file, path, storages: dict, what: str):
    """One pickle from ``file``; a truncated or garbled one raises WeightsFileError."""
    try:
        return TorchUnpickler(file, path, storages).load()
    except WeightsFileError:
        raise
    except Exception as exc:  # EOFError, UnpicklingError, a call with wrong arguments, ...
        raise WeightsFileError(f"load_state: {path} is truncated or corrupt: reading {what} "
                               f"failed ({type(exc).__name__}: {exc})") from exc


def _read_exact(file, nbytes: int, path, what: str) -> bytearray:
    """Exactly ``nbytes`` from ``file`` into a writable buffer, or WeightsFileError."""
    buf = bytearray(nbytes)
    view, got = memoryview(buf), 0
    while got < nbytes:
        n = file.readinto(view[got:])
        if not n:
            raise WeightsFileError(f"load_state: {path} ends early: {what} needs {nbytes} "
                                   f"bytes, the file has {got} (truncated download?)")
        got += n
    return buf


def _elements(storage: _Storage, dtype: _Dtype, big_endian: bool) -> np.ndarray:
    """The storage's bytes as a 1-D array of ``dtype`` in native byte order."""
    np_dtype = dtype.numpy().newbyteorder(">" if big_endian else "<")
    if len(storage.raw) % np_dtype.itemsize:
        raise ValueError(f"storage {storage.key!r} has {len(storage.raw)} bytes, not a "
                         f"whole number of {dtype.name} elements")
    flat = np.frombuffer(storage.raw, dtype=np_dtype)
    if big_endian:
        flat = flat.astype(np_dtype.newbyteorder("="))
    if dtype.name == "bfloat16":  # bfloat16 = the upper 16 bits of a float32
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    return flat


def _build(ref: _TensorRef, name: str, path, big_endian: bool) -> np.ndarray:
    """The array a _TensorRef describes, after checking it lies inside its storage."""
    flat = _elements(ref.storage, ref.dtype, big_endian)
    size, stride, offset = ref.size, ref.stride, ref.offset
    if min(size + stride + (offset,), default=0) < 0:
        raise WeightsFileError(f"load_state: tensor {name!r} in {path} has a negative size, "
                               f"stride or offset ({size}, {stride}, {offset})")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise WeightsFileError(
                f"load_state: tensor {name!r} in {path} (size {size}, stride {stride}, "
                f"offset {offset}) reaches element {last}, but its storage holds {flat.size}")
    contiguous = tuple(int(np.prod(size[k + 1:])) for k in range(len(size)))
    if offset == 0 and stride == contiguous and int(np.prod(size)) == flat.size:
        return flat.reshape(size)                   # the common case: no copy
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride])
    return np.array(view, order="C")                # a C-contiguous copy


def _tensors(obj, path, big_endian: bool) -> dict[str, np.ndarray]:
    """The unpickled object, a mapping of names to tensors, as a dict of arrays."""
    if not isinstance(obj, dict):
        raise WeightsFileError(f"load_state: {path} holds a {type(obj).__name__}, expected a "
                               "state dict (a mapping from names to tensors)")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise WeightsFileError(f"load_state: entry {key!r} of {path} is a "
                                   f"{type(value).__name__}, expected a tensor")
        out[str(key)] = _build(value, key, path, big_endian)
    return out


def load_legacy(path) -> dict[str, np.ndarray]:
    """A state dict from a file in torch's legacy (pre-1.6) format."""
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if _unpickle(f, path, storages, "the magic number") != LEGACY_MAGIC:
            raise WeightsFileError(f"load_state: {path} does not start with torch's magic "
                                   f"number {LEGACY_MAGIC:#x}")
        version = _unpickle(f, path, storages, "the protocol version")
        if version != LEGACY_PROTOCOL:
            raise WeightsFileError(f"load_state: {path} has protocol version {version!r}, "
                                   f"expected {LEGACY_PROTOCOL}")
        info = _unpickle(f, path, storages, "the system information")
        big_endian = isinstance(info, dict) and info.get("little_endian") is False
        obj = _unpickle(f, path, storages, "the state dict")
        keys = _unpickle(f, path, storages, "the list of storages")
        if not (isinstance(keys, list) and set(keys) == set(storages)):
            raise WeightsFileError(f"load_state: {path} lists storages {keys!r}, but its "
                                   f"tensors use {sorted(storages)}")
        for key in keys:
            storage = storages[key]
            header = _read_exact(f, 8, path, f"the size of storage {key!r}")
            (count,) = struct.unpack("<q", header)
            if count != storage.numel:
                raise WeightsFileError(f"load_state: storage {key!r} of {path} has {count} "
                                       f"elements, its tensors expect {storage.numel}")
            if storage.nbytes > size - f.tell():
                raise WeightsFileError(f"load_state: {path} ends early: storage {key!r} needs "
                                       f"{storage.nbytes} bytes, {size - f.tell()} are left "
                                       "(truncated download?)")
            storage.raw = _read_exact(f, storage.nbytes, path, f"storage {key!r}")
    return _tensors(obj, path, big_endian)


def _zip_prefix(archive: zipfile.ZipFile, path) -> str:
    """The archive's top folder ("archive/" in torch 1.6, the file's stem since)."""
    tops = [n[: -len("data.pkl")] for n in archive.namelist()
            if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(tops) != 1:
        raise WeightsFileError(f"load_state: {path} is a zip archive but not a torch file: "
                               f"expected one <folder>/data.pkl, found {len(tops)}")
    return tops[0]


def load_zip(path) -> dict[str, np.ndarray]:
    """A state dict from a file in torch's zip format (torch >= 1.6)."""
    storages: dict[str, _Storage] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _zip_prefix(archive, path)
            data = io.BytesIO(archive.read(prefix + "data.pkl"))
            obj = _unpickle(data, path, storages, "the state dict (data.pkl)")
            names = set(archive.namelist())
            big_endian = (prefix + "byteorder" in names
                          and archive.read(prefix + "byteorder") == b"big")
            for key, storage in storages.items():
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise WeightsFileError(f"load_state: {path} has no record {record} for "
                                           f"storage {key!r}")
                if archive.getinfo(record).file_size != storage.nbytes:
                    raise WeightsFileError(
                        f"load_state: record {record} of {path} has "
                        f"{archive.getinfo(record).file_size} bytes, expected {storage.nbytes}")
                with archive.open(record) as r:
                    storage.raw = _read_exact(r, storage.nbytes, path, f"record {record}")
    except zipfile.BadZipFile as exc:  # no central directory (truncated) or a bad CRC
        raise WeightsFileError(f"load_state: {path} is not a complete zip archive "
                               f"(truncated download?): {exc}") from exc
    return _tensors(obj, path, big_endian)


def load_torch_file(path) -> dict[str, np.ndarray]:
    """A state dict from a .pth file in either format (told apart by the first bytes)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    return load_zip(path) if head == b"PK\x03\x04" else load_legacy(path)
