"""Placing a model, and its optimizer's state, on the CPU or the GPU.

Where an array lives decides where it is computed; this is the one place that moves a
model's arrays. Every command (train, eval, predict, gradcheck, bench) calls ``place``:

    device = resolve_device("auto")          # "gpu" where CuPy runs, else "cpu"
    place(model, optimizer, device)          # parameters, buffers, momentum: all moved
    x = to_device(x_host, device)            # and the data follows
"""

from __future__ import annotations

from minivgg.backend import check_device, cupy_problem, require_cupy, to_device

__all__ = ["place", "resolve_device", "to_device", "model_device"]


def resolve_device(name: str = "auto") -> str:
    """"cpu", "gpu", or "auto" -> "gpu" where CuPy runs on a CUDA device, else "cpu".

    Asking for "gpu" where CuPy cannot run raises BackendUnavailable with the reason.
    """
    if name == "auto":
        return "gpu" if cupy_problem() is None else "cpu"
    device = check_device(name, "resolve_device")
    if device == "gpu":
        require_cupy("device 'gpu'")
    return device


def place(model, optimizer=None, device: str = "cpu"):
    """Move ``model`` (parameters, buffers) and ``optimizer`` (its state) to ``device``."""
    device = resolve_device(device)
    model.to(device)
    if optimizer is not None:
        optimizer.to(device)
    return model


def model_device(model) -> str:
    """"gpu" if the model's parameters are CuPy arrays, else "cpu"."""
    from minivgg.backend import device_of
    params = model.parameters()
    return device_of(params[0].data) if params else "cpu"
