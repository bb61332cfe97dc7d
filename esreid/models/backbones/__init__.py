"""Backbones: the ``BACKBONES`` registry, :func:`build_backbone` and strict ImageNet-checkpoint loading.

Every backbone exposes ``conv1, bn1, relu, maxpool, layer1..layer4`` (so methods can split it into shared and
per-branch stages), ``out_channels``, and ``forward(x) -> layer4 map (B, out_channels, h, w)``.
"""

from __future__ import annotations

import os
from typing import Dict, Mapping

import torch
from torch import nn

from esreid.engine.checkpoint import CheckpointError
from esreid.registry import Registry

BACKBONES = Registry("backbone")

from esreid.models.backbones import resnet  # noqa: E402,F401  (registers the ResNets; needs BACKBONES above)


def _read_state_dict(source: str) -> Dict[str, torch.Tensor]:
    """Read a state dict from a local file or a URL (through torch.hub's cache, so it works offline once cached).

    Accepts a bare state dict or ``{'state_dict': ...}`` / ``{'model': ...}``; strips a ``module.`` prefix.
    """
    if source.startswith(("http://", "https://")):
        obj = torch.hub.load_state_dict_from_url(source, map_location="cpu", progress=False, weights_only=True)
    else:
        if not os.path.isfile(source):
            raise CheckpointError(f"pretrained weights not found: {source}")
        try:
            obj = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as e:  # re-raised with the file name
            raise CheckpointError(f"{source}: not a loadable torch checkpoint ({type(e).__name__}: {e})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def _listing(keys: list, limit: int = 10) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_pretrained(model: nn.Module, source: str) -> None:
    """Load ``source`` (path or URL) into ``model`` strictly: every key present, none extra, all shapes equal.

    Raises :class:`CheckpointError` listing the missing / unexpected / mismatched keys and naming ``source``.
    """
    state = _read_state_dict(source)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = [
        f"{label} keys: {_listing(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{source} does not match the {type(model).__name__} backbone; " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def build_backbone(name: str, last_stride: int = 1, pretrained: str = "") -> nn.Module:
    """Build backbone ``name`` (see ``BACKBONES.names()``), optionally load ImageNet weights strictly from
    ``pretrained`` (path or URL; torchvision keys incl. ``fc``), then drop the ImageNet ``fc``.

    Returns a module whose ``forward`` maps ``(B, 3, H, W)`` to the ``layer4`` map ``(B, out_channels, h, w)``.
    """
    model = BACKBONES.get(name)(last_stride=last_stride)
    if pretrained:
        load_pretrained(model, pretrained)
    model.drop_fc()
    return model

