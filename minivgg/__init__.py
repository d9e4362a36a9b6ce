"""minivgg: VGG networks from scratch, every forward and backward pass written by hand."""

from minivgg.backend import (
    BackendUnavailable,
    asnumpy,
    default_device,
    get_array_module,
    get_backend,
    get_cpu_kernels,
    get_tf32,
    set_backend,
    set_cpu_kernels,
    set_tf32,
    to_device,
)
from minivgg.device import place, resolve_device
from minivgg.modes import grad_enabled, no_grad

__version__ = "0.1.0"

__all__ = ["set_backend", "get_backend", "set_cpu_kernels", "get_cpu_kernels",
           "default_device", "get_array_module", "asnumpy", "to_device", "place",
           "resolve_device", "no_grad", "grad_enabled", "set_tf32", "get_tf32",
           "BackendUnavailable", "__version__"]
