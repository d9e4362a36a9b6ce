"""Trained weights from torchvision (or any file with its keys) in a minivgg VGG.

    state = load_state("vgg16-397923af.pth")          # dict of NumPy arrays; torch not needed
    model = vgg("vgg16")                               # the matching minivgg network
    load_into(model, state, batch_norm=False)
    # or in one go: vgg("vgg16", weights="vgg16")      # downloads once into the cache

``load_state`` reads torch's two .pth formats (minivgg/weights/torch_file.py) and
.safetensors files, telling them apart by their first bytes. ``load_into`` copies
torchvision-named tensors into a VGG. Its keys already match torchvision's
(features.0.weight, classifier.0.weight, ...) except that

* torch's Linear weight is (out_features, in_features), minivgg's Dense weight the
  transpose, (in_features, out_features);
* torch's BatchNorm2d names gamma and beta "weight" and "bias", and counts its updates in
  num_batches_tracked, which evaluation never uses (it is dropped);
* torchvision puts ``avgpool = AdaptiveAvgPool2d((7, 7))`` between the features and the
  classifier, so its first Linear always reads 512*7*7 = 25,088 features. At 224 pixels the
  features are 7x7 and the pool does nothing. minivgg builds the head for one input size
  instead; at another size the pool is a fixed linear map, so it is folded into the first
  Dense layer's weight -- the network then computes exactly what torchvision's computes on
  an image of that size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from minivgg.layers import BatchNorm2D, Conv2D, Dense
from minivgg.layers.base import Parameter
from minivgg.models.vgg import VGG
from minivgg.weights import UnsafeWeightsError, WeightsFileError
from minivgg.weights.hub import WEIGHTS, fetch
from minivgg.weights.safetensors_file import load_safetensors
from minivgg.weights.torch_file import load_legacy, load_zip

__all__ = ["load_state", "load_into", "resolve_weights", "WEIGHTS", "WeightsFileError",
           "UnsafeWeightsError"]

TORCH_POOL = 7        # torchvision's VGG: self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
# torch's legacy files open with pickle protocol 2, then LONG1 (0x8a) of 10 bytes: the magic
LEGACY_HEAD = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
SHOWN = 6             # at most this many offending tensors are listed in an error


# -- reading a file -----------------------------------------------------------------------

def file_format(path) -> str:
    """"zip", "legacy" or "safetensors", from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(LEGACY_HEAD):
        return "legacy"
    if len(head) > 8 and head[8:9] == b"{":   # safetensors: u64 header length, then JSON
        return "safetensors"
    if head[257:262] == b"ustar":
        raise WeightsFileError(f"load_state: {path} is a tar archive, torch's format before "
                               "0.1.10 (2017), which is not supported; re-save it with torch")
    if len(head) < len(LEGACY_HEAD):
        raise WeightsFileError(f"load_state: {path} has only {len(head)} bytes: it is empty "
                               "or truncated, not a weights file")
    raise WeightsFileError(f"load_state: {path} is not a weights file we read: expected a "
                           f"torch .pth (zip or legacy) or .safetensors, got first bytes "
                           f"{head[:12]!r}")


def load_state(path) -> dict[str, np.ndarray]:
    """Read a torch .pth (either format) or .safetensors file into a dict of NumPy arrays."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"load_state: no weights file at {path}")
    loaders = {"zip": load_zip, "legacy": load_legacy, "safetensors": load_safetensors}
    return loaders[file_format(path)](path)


def resolve_weights(name_or_path) -> Path:
    """The path of a weights file: an existing file, or a torchvision name ("vgg16",
    "vgg16_bn", ...; see WEIGHTS) downloaded once into the cache (minivgg.weights.hub)."""
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path).lower()
    if name in WEIGHTS:
        return fetch(name)
    raise FileNotFoundError(f"resolve_weights: {name_or_path!r} is neither a file nor a known "
                            f"name; expected a path or one of {', '.join(WEIGHTS)}")


# -- torch's names and layouts ------------------------------------------------------------

def torch_layout(model: VGG) -> list[tuple[str, str, bool]]:
    """(torch key, minivgg key, transpose?) for every tensor of ``model``."""
    entries = []
    for path, layer in model.named_layers():
        if isinstance(layer, (Conv2D, Dense)):
            entries.append((f"{path}.weight", f"{path}.weight", isinstance(layer, Dense)))
            if layer.bias is not None:
                entries.append((f"{path}.bias", f"{path}.bias", False))
        elif isinstance(layer, BatchNorm2D):
            entries += [(f"{path}.weight", f"{path}.gamma", False),
                        (f"{path}.bias", f"{path}.beta", False),
                        (f"{path}.running_mean", f"{path}.running_mean", False),
                        (f"{path}.running_var", f"{path}.running_var", False)]
        elif layer.named_parameters() or layer.named_buffers():
            raise ValueError(f"load_into: no torchvision counterpart for {path} "
                             f"({type(layer).__name__})")
    return entries


def _feature_map(model: VGG) -> tuple[int, int, int]:
    s = model.settings
    return model["features"].output_shape((s.in_channels, s.input_size, s.input_size))


def _pool_matrix(n_in: int, n_out: int = TORCH_POOL) -> np.ndarray:
    """AdaptiveAvgPool1d as an (n_out, n_in) matrix: output i averages inputs
    floor(i*n_in/n_out) .. ceil((i+1)*n_in/n_out) - 1 (aten AdaptiveAveragePooling.cpp,
    start_index / end_index)."""
    p = np.zeros((n_out, n_in))
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        p[i, start:end] = 1.0 / (end - start)
    return p


def fold_avgpool(weight: np.ndarray, feature_map: tuple[int, int, int]) -> np.ndarray:
    """torch's first Linear weight (out, C*7*7) -> the weight (out, C*h*w) of the same map
    preceded by AdaptiveAvgPool2d(7) on a (C, h, w) input: W'[o,c] = Ph^T W[o,c] Pw."""
    c, h, w = feature_map
    out = weight.shape[0]
    w4 = weight.reshape(out * c, TORCH_POOL, TORCH_POOL)
    ph, pw = (_pool_matrix(n).astype(weight.dtype) for n in (h, w))
    return (ph.T @ w4 @ pw).reshape(out, c * h * w)


def _first_dense(model: VGG) -> str:
    return next(f"classifier.{n}" for n, layer in zip(model["classifier"].names,
                                                      model["classifier"].layers)
                if isinstance(layer, Dense))


def _torch_shapes(model: VGG, entries) -> dict[str, tuple]:
    """The shape each torch key must have; the first Linear may also be torchvision's
    25,088-wide one (then folded)."""
    params = {**model.named_parameters(), **model.named_buffers()}
    shapes = {}
    for torch_key, key, transpose in entries:
        value = params[key]
        shape = tuple((value.data if isinstance(value, Parameter) else value).shape)
        shapes[torch_key] = shape[::-1] if transpose else shape
    return shapes


# -- checking and copying -----------------------------------------------------------------

def _convolutions(keys) -> int:
    return sum(1 for k in keys if k.startswith("features.") and k.endswith(".weight")
               and k.replace(".weight", ".running_mean") not in keys)


def _check_batch_norm(model: VGG, state: dict, batch_norm) -> None:
    has_bn = any(isinstance(layer, BatchNorm2D) for _, layer in model.named_layers())
    if batch_norm is not None and bool(batch_norm) != has_bn:
        raise ValueError(f"load_into: batch_norm={batch_norm} but the model "
                         f"{'has' if has_bn else 'has no'} batch-norm layers")
    stats = sorted(k for k in state if k.endswith(".running_mean"))
    if stats and not has_bn:
        raise ValueError(f"load_into: the weights hold {stats[0]}: they are for a network "
                         "with batch norm (vgg*_bn); build the model with batch_norm=True")
    if has_bn and not stats:
        first = next(p for p, layer in model.named_layers() if isinstance(layer, BatchNorm2D))
        raise ValueError(f"load_into: the weights have no {first}.running_mean: they are for a "
                         "network without batch norm; build the model with batch_norm=False")


def _mismatch_report(state: dict, shapes: dict, folded_ok: dict) -> list[str]:
    """One line per missing, unexpected or mis-shaped tensor (at most SHOWN of each)."""
    def listed(items):
        return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more"
                                           if len(items) > SHOWN else "")
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    misshaped = [f"{k}: the file has {tuple(state[k].shape)}, the model expects {shapes[k]}"
                 + (f" (or {folded_ok[k]})" if k in folded_ok else "")
                 for k in shapes if k in state and tuple(state[k].shape) != shapes[k]
                 and tuple(state[k].shape) != folded_ok.get(k)]
    lines = [f"  {what}: {listed(items)}" for what, items in
             (("missing", missing), ("unexpected", unexpected)) if items]
    lines += [f"  {line}" for line in misshaped[:SHOWN]]
    if len(misshaped) > SHOWN:
        lines.append(f"  ... and {len(misshaped) - SHOWN} more mis-shaped")
    return lines


def load_into(model: VGG, state: dict, *, batch_norm: bool | None = None) -> VGG:
    """Copy torchvision-named tensors (``state``, e.g. from load_state) into ``model``.

    ``batch_norm`` says whether the weights are a *_bn network; it must agree with the
    model (None: take the model's word). Everything is checked before anything is copied;
    a state that does not fit names each offending torch key, its shape and the shape
    expected. Returns the model.
    """
    if not isinstance(model, VGG) or model.settings.dense_eval:
        raise TypeError("load_into: expected a VGG from minivgg.models.vgg() with its "
                        "classifier as Dense layers; load first, then call to_dense_eval")
    state = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    _check_batch_norm(model, state, batch_norm)
    entries = torch_layout(model)
    shapes = _torch_shapes(model, entries)
    fmap, first = _feature_map(model), _first_dense(model) + ".weight"
    folded_ok = {first: (shapes[first][0], fmap[0] * TORCH_POOL ** 2)}
    lines = _mismatch_report(state, shapes, folded_ok)
    if lines:
        hint = (f"  the file holds {_convolutions(state)} convolutions, the model "
                f"{_convolutions(shapes)} (vgg11: 8, vgg13: 10, vgg16: 13, vgg19: 16)")
        raise ValueError("\n".join(["load_into: the weights do not fit this model", *lines,
                                    hint]))
    converted = {}
    for torch_key, key, transpose in entries:
        value = np.asarray(state[torch_key])
        if torch_key == first and value.shape != shapes[first]:
            value = fold_avgpool(value, fmap)            # torchvision's 25,088-wide Linear
        converted[key] = value.T if transpose else value
    model.load_state_dict(converted)
    return model
