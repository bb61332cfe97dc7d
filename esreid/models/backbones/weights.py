"""Where ImageNet weights come from: ``model.pretrained`` as a local file, a URL or ``torchvision:<backbone>``, and the
torch hub cache that lets a machine without internet train (``esreid weights fetch``).

``model.pretrained`` takes:

* ``""``: random initialisation;
* ``torchvision:resnet50`` (any name of :data:`esreid.config.pretrained.TORCHVISION`): torchvision's ImageNet
  checkpoint of that ResNet (the "V1" weights, the ones re-ID papers start from), i.e. its URL;
* a URL (``https://...``): read from the torch hub cache, ``$TORCH_HOME/hub/checkpoints/<file name of the URL>``
  (torch's default ``~/.cache/torch/hub/checkpoints``), when the file is there; otherwise downloaded into it once.
  A file name with a hash part (``resnet50-0676ba61.pth``) is checked against the SHA-256 of the download, as
  ``torch.hub`` does;
* anything else: a local file path.

When neither the cache nor the download gives the file (offline, blocked, a wrong URL), :func:`resolve` raises one
:class:`PretrainedError` naming the three fixes: a local copy, the cache (``esreid weights fetch`` on a machine
online), or random initialisation. The trainer checks a local path (and that a ``torchvision:`` name fits
``model.backbone``) before it scans the dataset (:func:`problem_before_training`); the download happens when the
model is built.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.parse
import urllib.request
from typing import Optional, Tuple

from esreid.config.pretrained import PREFIX, TORCHVISION, PretrainedError, is_url, url_of  # the spec's grammar
from esreid.files import atomic_writer

HASH_PART = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's convention: <name>-<first hex digits of the SHA-256>.<ext>
TIMEOUT = 60  # seconds without data before a download is given up
CHUNK = 1 << 20


def cache_dir() -> str:
    """The torch hub checkpoint cache: ``$TORCH_HOME/hub/checkpoints`` (torch's rule, default
    ``~/.cache/torch/hub/checkpoints``)."""
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def cached_path(url: str) -> str:
    """Where the cache keeps ``url``: the cache folder plus the last part of the URL's path (as ``torch.hub``)."""
    return os.path.join(cache_dir(), os.path.basename(urllib.parse.urlparse(url).path))


def fixes(spec: str, url: str) -> str:
    """The three ways to get weights that cannot be downloaded here."""
    fetch = spec if spec.startswith(PREFIX) else url
    return (f"either (1) set model.pretrained to a local copy of {os.path.basename(cached_path(url))}, "
            f"(2) run 'esreid weights fetch {fetch}' once on a machine online (it saves {cached_path(url)}; copy that "
            "file to the same place here, or set TORCH_HOME to a folder holding hub/checkpoints/"
            f"{os.path.basename(cached_path(url))}), or (3) start from random weights with model.pretrained=''")


def download(url: str, dst: str) -> None:
    """Download ``url`` to ``dst`` atomically (never half-written, readable like any other output), checking the
    hash part of its file name when it has one.

    Raises:
        OSError: the server cannot be reached or the transfer fails (``urllib.error.URLError`` is one).
        PretrainedError: the download does not match the hash in its name (nothing is written).
    """
    expected = HASH_PART.search(os.path.basename(dst))
    sha256 = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response, atomic_writer(dst) as f:
        while True:
            chunk = response.read(CHUNK)
            if not chunk:
                break
            sha256.update(chunk)
            f.write(chunk)
        if expected and not sha256.hexdigest().startswith(expected.group(1)):
            raise PretrainedError(f"{url}: the download does not match the hash in its name (SHA-256 "
                                  f"{sha256.hexdigest()[:16]}... vs {expected.group(1)}); nothing was saved, retry")


def resolve(spec: str, log=None) -> str:
    """A local file holding the weights ``spec`` names: the path itself, or the cached copy of a URL (downloaded
    first when missing; ``log`` receives a line before a download, default stderr).

    Raises:
        PretrainedError: an unknown name, a missing local file, or a URL neither cached nor downloadable; the
            message names ``spec`` and the fixes.
    """
    url = url_of(spec)
    if url is None:
        if not os.path.isfile(spec):
            raise PretrainedError(f"model.pretrained: weights file not found: {spec}; fix the path, or start from "
                                  "random weights with model.pretrained=''")
        return spec
    path = cached_path(url)
    if os.path.isfile(path):
        return path
    (log or _stderr)(f"downloading {url} to {path}")
    try:
        download(url, path)
    except PretrainedError:
        raise
    except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts, an unwritable cache, a malformed URL
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise PretrainedError(f"model.pretrained {spec!r}: cannot download {url} ({reason}) and it is not in the "
                              f"torch hub cache ({cache_dir()}); {fixes(spec, url)}") from None
    return path


def _stderr(line: str) -> None:
    print(f"esreid: {line}", file=sys.stderr)


def problem_before_training(spec: str, backbone: str, imagenet: str) -> Optional[str]:
    """What would stop loading ``spec`` into ``backbone`` (which loads the ImageNet weights of the torchvision network
    ``imagenet``: :func:`esreid.models.backbones.imagenet_of`), found without the network: a missing local file, or
    torchvision weights of another architecture. None when nothing (a URL is fetched when the model is built)."""
    if not spec:
        return None
    if spec.startswith(PREFIX):
        name = spec[len(PREFIX):]
        if name != imagenet:
            return (f"{spec} are the weights of {name}, but model.backbone is {backbone}; use "
                    + (f"{PREFIX}{backbone}" if backbone in TORCHVISION else "model.pretrained=''")
                    + " or set model.backbone to " + name)
        return None
    if not is_url(spec) and not os.path.isfile(spec):
        return (f"weights file not found: {spec} ({'a folder' if os.path.isdir(spec) else 'no such file'}); fix the "
                f"path, use {PREFIX}<backbone> (e.g. {PREFIX}resnet50), or model.pretrained='' for random weights")
    return None


def fetch(spec: str, log=None) -> Tuple[str, bool]:
    """Put the weights ``spec`` (``torchvision:NAME`` or a URL) into the cache; returns ``(path, downloaded)``."""
    url = url_of(spec)
    if url is None:
        raise PretrainedError(f"esreid weights fetch: expected {PREFIX}NAME (one of {', '.join(TORCHVISION)}) or a "
                              f"URL, got {spec!r}")
    path = cached_path(url)
    if os.path.isfile(path):
        return path, False
    return resolve(spec, log), True
