"""Trained weights: torch's .pth formats and .safetensors read without torch, refused when
hostile or truncated, downloaded and checked by name, and -- against PyTorch itself -- the
same logits as torchvision's VGG layout for every configuration."""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from minivgg.data.download import DownloadError
from minivgg.models import vgg
from minivgg.pretrained import (
    UnsafeWeightsError,
    WeightsFileError,
    load_into,
    load_state,
    resolve_weights,
    torch_layout,
)
from minivgg.weights import hub
from tests.test_data_cifar import Server  # 127.0.0.1, serves one body, counts requests

NAMES = ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
MAGIC = 0x1950A86A20F9469CFC6C


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVGG_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


# --- torch files written by hand: the formats as torch/serialization.py writes them ------

def g(module, name):  # pickle's GLOBAL opcode
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text):          # BINUNICODE
    return b"X" + struct.pack("<I", len(text.encode())) + text.encode()


def ints(*values):    # MARK, BININT..., TUPLE
    return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"


def state_pickle(tensors, legacy):
    """An OrderedDict of _rebuild_tensor_v2 calls on FloatStorages, as torch pickles it."""
    out = b"\x80\x02" + g("collections", "OrderedDict") + b")R"
    for name, (key, numel, offset, size, stride) in tensors.items():
        pid = b"(" + s("storage") + g("torch", "FloatStorage") + s(key) + s("cpu")
        pid += b"J" + struct.pack("<i", numel) + (b"N" if legacy else b"") + b"tQ"
        hooks = g("collections", "OrderedDict") + b")R"
        args = b"(" + pid + b"J" + struct.pack("<i", offset) + ints(*size) + ints(*stride)
        out += s(name) + g("torch._utils", "_rebuild_tensor_v2") + args + b"\x89" + hooks
        out += b"tRs"
    return out + b"."


def write_pth(path, tensors, storages, fmt, state=None):
    """A .pth in torch's legacy or zip layout; ``state`` replaces the state pickle."""
    state = state_pickle(tensors, fmt == "legacy") if state is None else state
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("w/data.pkl", state)
            z.writestr("w/byteorder", "little")
            for key, values in storages.items():
                z.writestr(f"w/data/{key}", values.astype("<f4").tobytes())
        return path
    with open(path, "wb") as f:
        for obj in (MAGIC, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(state)
        pickle.dump(sorted(storages), f, protocol=2)
        for key in sorted(storages):
            f.write(struct.pack("<q", storages[key].size) + storages[key].astype("<f4").tobytes())
    return path


STORAGE = np.arange(12, dtype=np.float32)
TENSORS = {"w": ("0", 12, 0, (3, 4), (4, 1)),      # contiguous
           "t": ("0", 12, 1, (3, 3), (1, 4))}      # transposed view with an offset


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_hand_written_pth_gives_strided_views_of_its_storage(tmp_path, fmt):
    state = load_state(write_pth(tmp_path / "a.pth", TENSORS, {"0": STORAGE}, fmt))
    np.testing.assert_array_equal(state["w"], STORAGE.reshape(3, 4))
    np.testing.assert_array_equal(state["t"], STORAGE.reshape(3, 4)[:, 1:].T)
    assert state["t"].flags.c_contiguous and state["w"].dtype == np.float32


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_a_view_outside_its_storage_is_refused(tmp_path, fmt):
    bad = {"w": ("0", 12, 2, (3, 4), (4, 1))}       # offset 2 + 11 > last element 11
    path = write_pth(tmp_path / "a.pth", bad, {"0": STORAGE}, fmt)
    with pytest.raises(WeightsFileError, match=r"'w'.*reaches element 13.*holds 12"):
        load_state(path)


class Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["zip", "legacy-state", "legacy-sysinfo", "legacy-keys"])
def test_a_pickle_that_calls_os_system_is_refused_and_runs_nothing(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"x": Hostile(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if where == "zip":
        write_pth(path, {}, {}, "zip", state=evil)
    else:
        write_pth(path, TENSORS, {"0": STORAGE}, "legacy")
        good = [pickle.dumps(o, protocol=2) for o in (MAGIC, 1001, {"little_endian": True})]
        parts = good + [state_pickle(TENSORS, True), pickle.dumps(["0"], protocol=2)]
        parts[{"legacy-sysinfo": 2, "legacy-state": 3, "legacy-keys": 4}[where]] = evil
        path.write_bytes(b"".join(parts) + struct.pack("<q", 12) + STORAGE.tobytes())
    with pytest.raises(UnsafeWeightsError, match=r"evil\.pth asks for posix\.system.*refused"):
        load_state(path)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_a_truncated_pth_is_refused_naming_the_file(tmp_path, fmt):
    whole = write_pth(tmp_path / "w.pth", TENSORS, {"0": STORAGE}, fmt).read_bytes()
    for cut in (5, len(whole) // 3, len(whole) // 2, len(whole) - 3):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(whole[:cut])
        with pytest.raises(WeightsFileError, match=rf"cut{cut}\.pth.*(truncated|ends early)"):
            load_state(path)


def test_a_truncated_safetensors_file_is_refused_naming_the_file(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    st.save_file({"w": STORAGE}, str(tmp_path / "w.safetensors"))
    path = tmp_path / "cut.safetensors"
    path.write_bytes((tmp_path / "w.safetensors").read_bytes()[:-5])
    with pytest.raises(WeightsFileError, match=r"cut\.safetensors.*truncated"):
        load_state(path)


def test_reading_weights_never_imports_torch(tmp_path):
    path = write_pth(tmp_path / "a.pth", TENSORS, {"0": STORAGE}, "legacy")
    code = ("import sys; sys.modules['torch'] = None  # any 'import torch' now fails\n"
            "import minivgg.imagenet, minivgg.pretrained as p\n"
            f"assert p.load_state({str(path)!r})['w'].shape == (3, 4)")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- torchvision keys from a minivgg model, without torch --------------------------------

def torch_keyed(model):
    """The state dict torchvision would hold for ``model`` (Linear weights (out, in))."""
    state = model.state_dict()
    out = {t: (state[k].T if tr else state[k]).copy() for t, k, tr in torch_layout(model)}
    out.update({k.replace("running_mean", "num_batches_tracked"): np.array(3)
                for k in list(out) if k.endswith("running_mean")})
    return out


def small(config, batch_norm=False, seed=0, **kw):
    return vgg(config, num_classes=10, input_size=32, width=0.25, fc_width=16,
               batch_norm=batch_norm, seed=seed, **kw)


def test_safetensors_round_trip_gives_the_same_logits(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    source = small("vgg11", batch_norm=True, seed=1)
    st.save_file(torch_keyed(source), str(tmp_path / "m.safetensors"))
    model = small("vgg11", batch_norm=True, seed=2, weights=tmp_path / "m.safetensors")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(model.forward(x, training=False),
                                  source.forward(x, training=False))


def test_weights_for_another_configuration_name_the_tensor():
    with pytest.raises(ValueError, match=r"(?s)missing: features\.3\.weight.*unexpected: "
                                         r"features\.2\.weight.*13 convolutions, the model 8"):
        load_into(small("vgg11"), torch_keyed(small("vgg16")), batch_norm=False)


def test_weights_with_the_wrong_batch_norm_setting_name_the_tensor():
    with pytest.raises(ValueError, match=r"features\.1\.running_mean.*batch_norm=True"):
        load_into(small("vgg11"), torch_keyed(small("vgg11", True)), batch_norm=False)
    with pytest.raises(ValueError, match=r"no features\.1\.running_mean.*batch_norm=False"):
        load_into(small("vgg11", True), torch_keyed(small("vgg11")), batch_norm=True)
    with pytest.raises(ValueError, match=r"batch_norm=True but the model has no"):
        load_into(small("vgg11"), torch_keyed(small("vgg11")), batch_norm=True)


def test_a_misfit_leaves_the_model_unchanged():
    model, before = small("vgg11"), small("vgg11").state_dict()
    state = torch_keyed(small("vgg11", seed=5))
    state["classifier.6.weight"] = state["classifier.6.weight"][:9]
    with pytest.raises(ValueError, match=r"classifier\.6\.weight: the file has \(9, 16\), "
                                         r"the model expects \(10, 16\)"):
        load_into(model, state)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


# --- by name: download once, checked by the SHA-256 prefix in the name --------------------

def files_under(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_a_named_download_with_the_right_hash_is_kept_and_reused(tmp_path, monkeypatch):
    body = write_pth(tmp_path / "src.pth", TENSORS, {"0": STORAGE}, "zip").read_bytes()
    name = f"vgg16-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    monkeypatch.setitem(hub.WEIGHTS, "vgg16", name)
    with Server(body) as server:
        monkeypatch.setattr(hub, "BASE_URL", server.base)
        path = resolve_weights("vgg16")
        assert resolve_weights("VGG16") == path and server.requests == 1
    assert path == tmp_path / "cache" / "weights" / name and path.read_bytes() == body
    assert files_under(tmp_path / "cache") == [name]
    np.testing.assert_array_equal(load_state(path)["w"], STORAGE.reshape(3, 4))


def test_a_named_download_with_the_wrong_hash_is_deleted(tmp_path, monkeypatch):
    monkeypatch.setitem(hub.WEIGHTS, "vgg16", "vgg16-00000000.pth")
    with Server(b"not the weights") as server:
        monkeypatch.setattr(hub, "BASE_URL", server.base)
        with pytest.raises(DownloadError, match=r"SHA-256 .* starts with 00000000.*deleted"):
            resolve_weights("vgg16")
    assert files_under(tmp_path / "cache") == []


def test_offline_the_error_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(hub, "BASE_URL", f"http://127.0.0.1:{port}/models/")
    with pytest.raises(DownloadError) as info:
        resolve_weights("vgg19_bn")
    message = str(info.value)
    dest = tmp_path / "cache" / "weights" / "vgg19_bn-c79401a0.pth"
    assert "\n" not in message and message.endswith(f"put the file at {dest}")
    assert files_under(tmp_path / "cache") == []


def test_a_copy_in_torch_hubs_cache_is_used_and_unknown_names_are_refused(tmp_path):
    copy = tmp_path / "torch-home" / "hub" / "checkpoints" / "vgg13-19584684.pth"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"x")
    assert resolve_weights("vgg13") == copy
    with pytest.raises(FileNotFoundError, match=r"'vgg17'.*vgg11, vgg11_bn"):
        resolve_weights("vgg17")
