"""Reading .safetensors files (https://github.com/huggingface/safetensors).

The format holds no code: 8 bytes (little-endian) giving the length N of a JSON header,
N bytes of JSON ({name: {"dtype", "shape", "data_offsets"}}), then the tensors' raw bytes.
The ``safetensors`` package reads it straight into NumPy arrays; it is an optional
dependency, imported only when such a file is opened.
"""

from __future__ import annotations

import numpy as np

from minivgg.weights import WeightsFileError


def load_safetensors(path) -> dict[str, np.ndarray]:
    """A state dict from a .safetensors file, as NumPy arrays."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ImportError(f"load_state: reading {path} needs the safetensors package, "
                          "which is not installed: pip install safetensors") from None
    try:
        return dict(load_file(str(path)))
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError
        raise WeightsFileError(f"load_state: {path} is not a readable safetensors file "
                               f"(truncated?): {exc}") from exc
