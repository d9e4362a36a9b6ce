"""minivgg: VGG networks from scratch, every forward and backward pass written by hand."""

from minivgg.backend import asnumpy, get_array_module, get_backend, set_backend, to_device

__version__ = "0.1.0"

__all__ = ["set_backend", "get_backend", "get_array_module", "asnumpy", "to_device",
           "__version__"]
