"""Reading trained weights written by other frameworks, without importing them.

    torch_file.py        PyTorch's .pth files (the legacy format and the zip one), read with
                         a restricted unpickler: tensors become NumPy arrays, nothing else
                         is built and no code in the file runs
    safetensors_file.py  .safetensors files, through the ``safetensors`` package
    hub.py               torchvision's published VGG weights by name, downloaded once and
                         checked against the SHA-256 prefix in their file names

``minivgg.pretrained`` is the public face: ``load_state``, ``load_into``,
``resolve_weights``.
"""

from __future__ import annotations


class WeightsFileError(ValueError):
    """A weights file is truncated, corrupt or not in a format we read."""


class UnsafeWeightsError(WeightsFileError):
    """A weights file asks to import or call something a tensor file never needs."""
