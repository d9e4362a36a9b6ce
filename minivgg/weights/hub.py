"""torchvision's trained VGG weights, by name: downloaded once, checked, cached.

The file names and the address are torchvision's (torchvision/models/vgg.py, the
``IMAGENET1K_V1`` entry of each ``VGG*_Weights``; these files date from 2017 and are in
torch's legacy format). torch.hub's convention names the check: the hex digits after the
last "-" of the file name are the start of the file's SHA-256 (torch/hub.py, HASH_REGEX,
used by ``load_state_dict_from_url(check_hash=True)``), so ``vgg16-397923af.pth`` is
right when its SHA-256 starts with 397923af. A download that does not match is deleted.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from minivgg.data.download import DownloadError, cache_dir, download

BASE_URL = "https://download.pytorch.org/models/"
WEIGHTS = {
    "vgg11": "vgg11-8a719046.pth",
    "vgg11_bn": "vgg11_bn-6002323d.pth",
    "vgg13": "vgg13-19584684.pth",
    "vgg13_bn": "vgg13_bn-abd245e5.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
    "vgg19_bn": "vgg19_bn-c79401a0.pth",
}
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")   # as torch/hub.py's HASH_REGEX


class HashMismatchError(DownloadError):
    """A download arrived complete, but its SHA-256 is not the one its name carries."""


def weights_dir() -> Path:
    """Where downloaded weights live: <cache>/weights (cache: $MINIVGG_DATA or ~/.cache/minivgg)."""
    return cache_dir() / "weights"


def torch_hub_dir() -> Path:
    """torch.hub's own cache (torch/hub.py, _get_torch_home): a copy there is used as is."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def sha256_prefix(filename: str) -> str | None:
    """The SHA-256 prefix a file name carries ("vgg16-397923af.pth" -> "397923af")."""
    match = HASH_IN_NAME.search(filename)
    return match.group(1) if match else None


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_checked(url: str, dest, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``; keep it only if its SHA-256 starts as its name says.

    The bytes go to ``<dest>.unverified`` (atomically, by minivgg.data.download) and are
    renamed to ``dest`` once checked, so ``dest`` never holds an unchecked file.
    """
    dest = Path(dest)
    prefix = sha256_prefix(dest.name)
    unverified = dest.with_name(dest.name + ".unverified")
    unverified.unlink(missing_ok=True)               # download() would reuse a stale one
    download(url, unverified, md5=None, progress=progress)
    digest = file_sha256(unverified)
    if prefix is not None and not digest.startswith(prefix):
        unverified.unlink()
        raise HashMismatchError(f"download_checked: {url} arrived with SHA-256 {digest}, but its "
                            f"name {dest.name} says it starts with {prefix}; the file was "
                            "deleted. Try again.")
    os.replace(unverified, dest)
    return dest


def _reason(exc: DownloadError) -> str:
    cause = exc.__cause__
    return str(getattr(cause, "reason", None) or cause or exc).split(". ")[0]


def fetch(name: str, progress: bool = True) -> Path:
    """The local path of torchvision's weights for ``name`` ("vgg16", ...), downloading once."""
    filename = WEIGHTS[name]
    dest = weights_dir() / filename
    if dest.is_file():
        return dest
    if (torch_hub_dir() / filename).is_file():
        return torch_hub_dir() / filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = BASE_URL + filename
    try:
        return download_checked(url, dest, progress)
    except HashMismatchError:
        raise
    except DownloadError as exc:
        raise DownloadError(f"resolve_weights: could not download {filename} from {url} "
                            f"({_reason(exc)}); offline, put the file at {dest}") from exc
