"""minivgg: VGG networks from scratch, every forward and backward pass written by hand."""

from minivgg.backend import (
    BackendUnavailable,
    asnumpy,
    get_array_module,
    get_backend,
    get_tf32,
    set_backend,
    set_tf32,
    to_device,
)

__version__ = "0.1.0"

__all__ = ["set_backend", "get_backend", "get_array_module", "asnumpy", "to_device",
           "set_tf32", "get_tf32", "BackendUnavailable", "__version__"]
