"""What ``model.pretrained`` may say, checked when a config is loaded (no file or network access): ``""``,
``torchvision:<resnet>`` (one of :data:`TORCHVISION`), a URL, or a local file. Getting the weights it names (the
torch hub cache, downloads) is :mod:`esreid.models.backbones.weights`, which sits above the config layer."""

from __future__ import annotations

from typing import Optional

from esreid.errors import CheckpointError

PREFIX = "torchvision:"
TORCHVISION = {  # torchvision.models.ResNet*_Weights.IMAGENET1K_V1
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


class PretrainedError(CheckpointError):
    """ImageNet weights named by ``model.pretrained`` cannot be had; the message names the ways to fix it."""


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def url_of(spec: str) -> Optional[str]:
    """The URL ``spec`` stands for (``torchvision:NAME`` or a URL), None for a local path or ``""``.

    Raises:
        PretrainedError: an unknown ``torchvision:`` name.
    """
    if spec.startswith(PREFIX):
        name = spec[len(PREFIX):]
        if name not in TORCHVISION:
            raise PretrainedError(f"unknown weights {spec!r}: expected one of "
                                  f"{', '.join(PREFIX + n for n in TORCHVISION)}, a URL or a local file")
        return TORCHVISION[name]
    return spec if is_url(spec) else None


def config_problem(spec: str) -> Optional[str]:
    """What is wrong with ``model.pretrained`` as written (no file or network access), or None."""
    try:
        url_of(spec)
    except PretrainedError as e:
        return str(e)
    return None
