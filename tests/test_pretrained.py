"""Trained weights: torch's .pth formats and .safetensors read without torch, refused when
hostile or truncated, downloaded and checked by name, and -- against PyTorch itself -- the
same logits as torchvision's VGG layout for every configuration."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
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

class Server:
    """http.server on 127.0.0.1 serving ``body`` at any path; counts requests."""

    def __init__(self, body: bytes):
        self.body, self.requests = body, 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}/models/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


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


# --- against PyTorch: torchvision's VGG layout, saved by torch.save, same logits ----------

def torch_vgg(torch, layers, width, batch_norm, fc, classes):
    """A module with torchvision's VGG layout and state-dict keys (torchvision/models/vgg.py:
    make_layers, then avgpool AdaptiveAvgPool2d((7, 7)) and the 3-Linear classifier)."""
    nn = torch.nn
    features, c = [], 3
    for v in layers:
        if v == "M":
            features.append(nn.MaxPool2d(2, 2))
            continue
        out = max(1, round(v * width))
        features += [nn.Conv2d(c, out, 3, padding=1), *([nn.BatchNorm2d(out)] * batch_norm),
                     nn.ReLU(inplace=True)]
        c = out

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*features)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(c * 49, fc), nn.ReLU(True), nn.Dropout(), nn.Linear(fc, fc),
                nn.ReLU(True), nn.Dropout(), nn.Linear(fc, classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return VGG()


def random_torch_vgg(torch, name, width=0.25, dtype="float32", seed=0):
    """``name``'s layout with random weights and non-trivial running statistics."""
    from minivgg.models import ALIASES, VGG_CONFIGS
    torch.manual_seed(seed)
    net = torch_vgg(torch, VGG_CONFIGS[ALIASES[name.split("_")[0]]], width,
                    name.endswith("_bn"), fc=64, classes=10)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                # He-normal keeps the signal alive through 19 layers (torch's default init
                # shrinks it until the biases alone decide the logits, hiding any error)
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.bias.normal_(0.0, 0.02)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(123)
    return net.to(getattr(torch, dtype)).eval()


def save(torch, net, path: Path, fmt: str) -> Path:
    if fmt == "safetensors":
        st = pytest.importorskip("safetensors.numpy")
        st.save_file({k: v.numpy() for k, v in net.state_dict().items()}, str(path))
    else:
        torch.save(net.state_dict(), path, _use_new_zipfile_serialization=fmt == "zip")
    return path


def worst_relative_error(torch, net, name, path, size, width, dtype):
    model = vgg(name.split("_")[0], num_classes=10, input_size=size, width=width, fc_width=64,
                batch_norm=name.endswith("_bn"), dtype=np.dtype(dtype), weights=path)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1),
                    dtype=getattr(torch, dtype))
    with torch.no_grad():
        expected = net(x).numpy()
    got = model.forward(x.numpy(), training=False)
    assert got.dtype == np.dtype(dtype) and got.shape == expected.shape == (2, 10)
    # Deep ReLU nets at random init give every input nearly the same logits, so the
    # part that depends on the input (image 0 minus image 1) is compared on its own too.
    d_got, d_expected = got[0] - got[1], expected[0] - expected[1]
    assert np.abs(d_expected).max() > 0.01 * np.abs(expected).max(), "input barely matters"
    return max(float(np.abs(got - expected).max() / np.abs(expected).max()),
               float(np.abs(d_got - d_expected).max() / np.abs(d_expected).max()))


TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


@pytest.mark.crosscheck
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fmt", ["legacy", "zip", "safetensors"])
@pytest.mark.parametrize("name", [n if n in ("vgg11", "vgg11_bn") else
                                  pytest.param(n, marks=pytest.mark.slow) for n in NAMES])
def test_logits_equal_torchs_for_every_configuration_and_format(tmp_path, name, fmt, dtype):
    torch = pytest.importorskip("torch")
    net = random_torch_vgg(torch, name, dtype=dtype)
    path = save(torch, net, tmp_path / f"{name}.{fmt}", fmt)
    error = worst_relative_error(torch, net, name, path, 32, 0.25, dtype)
    print(f"{name} {fmt} {dtype}: worst relative error {error:.2e}")
    assert error < TOLERANCE[dtype]


@pytest.mark.crosscheck
@pytest.mark.parametrize("size", [64, 96, 224])   # 2x2, 3x3 (pool folded) and 7x7 (none)
def test_the_adaptive_pool_is_folded_exactly_at_other_input_sizes(tmp_path, size):
    torch = pytest.importorskip("torch")
    net = random_torch_vgg(torch, "vgg11_bn", width=0.125, dtype="float64")
    path = save(torch, net, tmp_path / "w.pth", "zip")
    error = worst_relative_error(torch, net, "vgg11_bn", path, size, 0.125, "float64")
    print(f"vgg11_bn at {size}: worst relative error {error:.2e}")
    assert error < TOLERANCE["float64"]


@pytest.mark.crosscheck
@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_real_torch_files_equal_torch_load_and_hostile_ones_are_refused(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    tensors = {"h": torch.randn(3, 2).half().t(), "l": torch.arange(5)[1:],
               "b": torch.randn(4).to(torch.bfloat16), "d": torch.randn(2, 2).double()}
    path = tmp_path / "t.pth"
    torch.save(tensors, path, _use_new_zipfile_serialization=fmt == "zip")
    state = load_state(path)
    for k, t in tensors.items():
        np.testing.assert_array_equal(state[k], t.float().numpy() if k == "b" else t.numpy())
        assert state[k].dtype == (np.float32 if k == "b" else t.numpy().dtype)
    marker = tmp_path / "pwned"
    torch.save({"x": Hostile(marker)}, path, _use_new_zipfile_serialization=fmt == "zip")
    with pytest.raises(UnsafeWeightsError, match="posix.system"):
        load_state(path)
    assert not marker.exists()


# --- ImageNet preprocessing and class names ----------------------------------------------

def test_class_names_are_the_1000_in_torchvisions_order():
    from minivgg.imagenet import class_names
    names = class_names()
    assert len(names) == 1000 and all(n and n == n.strip() for n in names)
    known = {0: "tench", 1: "goldfish", 207: "golden retriever", 281: "tabby",
             285: "Egyptian cat", 409: "analog clock", 457: "bow tie",
             652: "military uniform", 999: "toilet tissue"}
    assert {i: names[i] for i in known} == known
    # torchvision's list repeats two names, at these indices
    assert [i for i, n in enumerate(names) if n in ("crane", "maillot")] == [134, 517, 638, 639]


def test_preprocess_resizes_the_shorter_side_crops_the_centre_and_normalises():
    from PIL import Image

    from minivgg.imagenet import MEAN, STD, center_crop, preprocess, resize_shorter
    assert resize_shorter(Image.new("RGB", (400, 300))).size == (341, 256)
    assert resize_shorter(Image.new("RGB", (300, 1000))).size == (256, 853)
    x = preprocess(Image.new("RGB", (500, 300), (10, 128, 250)))
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    expected = (np.array([10, 128, 250]) / 255 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(x[0, :, 100, 100], expected, rtol=1e-6)
    assert np.ptp(x, axis=(2, 3)).max() < 1e-6
    # a 300x256 photo is not resized; the crop starts at column round(76 / 2) = 38
    pixels = np.zeros((256, 300, 3), np.uint8)
    pixels[:, 38] = 255
    assert center_crop(resize_shorter(Image.fromarray(pixels))).size == (224, 224)
    x = preprocess(pixels)
    assert np.allclose(x[0, :, :, 0], ((1 - np.array(MEAN)) / np.array(STD))[:, None])
    assert np.allclose(x[0, :, :, 1], (-np.array(MEAN) / np.array(STD))[:, None])


def test_preprocess_reads_files_in_any_colour_mode(tmp_path):
    from PIL import Image

    from minivgg.imagenet import preprocess, unnormalize
    Image.new("L", (240, 260), 77).save(tmp_path / "grey.png")
    Image.new("RGBA", (240, 260), (77, 77, 77, 9)).save(tmp_path / "rgba.png")
    grey, rgba = (preprocess(tmp_path / f) for f in ("grey.png", "rgba.png"))
    np.testing.assert_array_equal(grey, rgba)
    np.testing.assert_allclose(unnormalize(grey), 77 / 255, atol=1e-6)


def test_top_k_is_a_stable_softmax_with_names():
    from minivgg.imagenet import top_k
    logits = np.full((1, 1000), -5.0, np.float32)
    logits[0, [207, 281, 999]] = [10_000.0, 9_999.0, 9_998.0]   # exp would overflow
    best = top_k(logits, 3)
    assert [(i, n) for i, n, _ in best] == [(207, "golden retriever"), (281, "tabby"),
                                            (999, "toilet tissue")]
    e = np.exp([0.0, -1.0, -2.0])
    np.testing.assert_allclose([p for *_, p in best], e / e.sum(), rtol=1e-12)
    assert top_k(np.zeros(4), 2, names=list("abcd")) == [(0, "a", 0.25), (1, "b", 0.25)]
    with pytest.raises(ValueError, match=r"top_k: expected the logits of one image"):
        top_k(np.zeros((2, 1000)))
