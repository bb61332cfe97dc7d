"""Backbones: the ``BACKBONES`` registry, :func:`build_backbone` and strict ImageNet-checkpoint loading.

The stage API every backbone implements (methods split a trunk through it, never by attribute names):

* :data:`STAGES` names the stages in order: ``stem``, ``layer1`` .. ``layer4``;
* ``backbone.stages(first, last)`` -> ``nn.Sequential`` of the stages ``first..last`` (the trunk's own modules);
* ``backbone.channels[stage]`` output channels of each stage, ``backbone.out_channels`` those of ``layer4``;
* ``forward(x)`` -> the ``layer4`` map ``(B, out_channels, h, w)``.

Each backbone is registered with ``channels=`` (per stage) so that configs can be checked without building it, and
:func:`feature_size` gives the spatial size of a stage's output for an input size.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from esreid.config import Invalid
from esreid.errors import CheckpointError, unreadable_torch_file
from esreid.models.backbones.weights import resolve
from esreid.registry import Registry

BACKBONES = Registry("backbone", locations=(__name__,))  # resnet.py, resnet_nl.py, ... on first lookup
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class CheckpointReader:
    """How a kind of ``model.pretrained`` beyond ImageNet trunks initialises a model: ``claims(spec)`` says whether
    ``spec`` is one, ``backbone_state(spec, backbone, last_stride)`` gives the trunk's weights (what
    :func:`build_backbone` loads), ``initialise_heads(model, spec)`` loads the rest into the built model and returns
    the line saying what was loaded (:func:`esreid.models.build_model`)."""

    claims: Callable[[str], bool]
    backbone_state: Callable[[str, str, int], Dict[str, torch.Tensor]]
    initialise_heads: Callable[[Any, str], str]


# filled by esreid.models.importers (other toolkits' re-ID checkpoints), on first lookup: the readers build models,
# so the backbones name them by location instead of importing them
CHECKPOINT_READERS = Registry("checkpoint reader", locations=("esreid.models.importers",))


def checkpoint_reader(spec: str) -> Optional[CheckpointReader]:
    """The reader claiming the ``model.pretrained`` value ``spec``; None for ``""`` and ImageNet weights."""
    if not spec:
        return None
    return next((reader for _, reader in CHECKPOINT_READERS.items() if reader.claims(spec)), None)
# stride-2 operations ending each stage: stem = conv1 + maxpool, layer2 / layer3 = their first block, layer4 = the last
# stride (1 in re-ID, docs/methods.md §0)
_HALVINGS = {"stem": 2, "layer1": 0, "layer2": 1, "layer3": 1}


def imagenet_of(backbone: str) -> str:
    """The torchvision network whose ImageNet weights ``backbone`` loads: its registration's ``imagenet`` (a ResNet
    with added modules, e.g. ``resnet50_nl`` -> ``resnet50``), else its own name."""
    return BACKBONES.meta(backbone).get("imagenet", backbone) if backbone in BACKBONES else backbone


def require_channels_multiple_of(cfg, multiple: int, why: str) -> None:
    """Raise :class:`~esreid.config.Invalid` on ``model.backbone`` unless the ``layer4`` width of ``cfg.backbone`` (a
    model config; from its registration, without building it) is a multiple of ``multiple``."""
    c = BACKBONES.meta(cfg.backbone)["channels"]["layer4"]
    if c % multiple:
        raise Invalid("model.backbone", f"{cfg.backbone!r} gives {c} channels but {why} needs a multiple of "
                                        f"{multiple} (e.g. resnet50, resnet101, resnet_tiny_bottleneck)")


def feature_size(height: int, width: int, stage: str = "layer4", last_stride: int = 1,
                 backbone: Optional[str] = None) -> Tuple[int, int]:
    """Spatial size ``(h, w)`` of ``stage``'s output for a ``height x width`` input: every stride-2 convolution or
    pooling of a ResNet (kernel 3/7/1 with padding 1/3/0) maps n to ceil(n / 2). 384x128 -> layer4 24x8.
    ``backbone``: a registered backbone whose own per-stage halvings differ from a ResNet's (its registration's
    ``halvings`` meta, e.g. ``{"layer3": 0}`` for an output stride of 8); None: a ResNet's."""
    own = {**_HALVINGS, **(BACKBONES.meta(backbone).get("halvings", {}) if backbone else {})}
    halvings_total = sum(own.get(s, int(last_stride == 2)) for s in STAGES[: STAGES.index(stage) + 1])
    for _ in range(halvings_total):
        height, width = -(-height // 2), -(-width // 2)
    return height, width



def read_state_dict(source: str) -> Dict[str, torch.Tensor]:
    """Read a state dict from a local file, a URL or ``torchvision:NAME`` (both through the torch hub cache, so they
    work offline once cached: :mod:`esreid.models.backbones.weights`), with ``weights_only=True``.

    Accepts a bare state dict or one wrapped as ``{'state_dict': ...}`` (torchreid) / ``{'model': ...}`` (fast-reid,
    other entries such as the optimiser ignored); strips a ``module.`` prefix (DataParallel / DDP saves).

    Raises:
        CheckpointError: not a torch file, a file of pickled Python objects (``torch.save(model)``: the message gives
            the command that re-saves its state dict), or no name -> tensor mapping inside.
    """
    path = resolve(source)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # re-raised with the file name
        whole = re.search(r"GLOBAL ((?:torch\.nn\.modules|fastreid|torchreid)\.[\w.]+)", str(e))  # torch.save(model)
        if not whole:  # any other object (possibly code that would run): no advice to unpickle it
            raise unreadable_torch_file(path, e, "weights file") from None
        raise CheckpointError(
            f"{path} holds pickled Python objects ({whole.group(1)}), a whole model saved with torch.save(model), "
            "which esreid does not unpickle (it loads weights_only=True); only if you trust where the file comes "
            "from, re-save its state dict where the model's code is importable: python -c \"import torch; m = "
            f"torch.load('{path}', weights_only=False); torch.save(getattr(m, 'state_dict', lambda: m)(), "
            f"'{os.path.splitext(path)[0]}_state_dict.pth')\" and give that file") from None
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
    """Load ``source`` (path, URL or ``torchvision:NAME``) into ``model`` strictly: every key present, none extra,
    all shapes equal. Keys under the model's ``not_pretrained`` prefixes (modules added to the torchvision layout,
    e.g. non-local blocks) are not expected in the file and keep their initialisation.

    Raises :class:`CheckpointError` listing the missing / unexpected / mismatched keys and naming ``source``.
    """
    state = read_state_dict(source)
    fresh = tuple(getattr(model, "not_pretrained", ()))  # prefixes of modules added to the ImageNet layout
    own = {k: v for k, v in model.state_dict().items() if not (fresh and k.startswith(fresh))}
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
    model.load_state_dict(state, strict=not fresh)  # the keys under ``fresh`` keep their own initialisation


def build_backbone(name: str, last_stride: int = 1, pretrained: str = "") -> nn.Module:
    """Build backbone ``name`` (see ``BACKBONES.names()``), optionally load ImageNet weights strictly from
    ``pretrained`` (path, URL or ``torchvision:NAME``; torchvision keys incl. ``fc``), then drop the ImageNet ``fc``.
    ``pretrained`` naming another toolkit's re-ID checkpoint (:mod:`esreid.models.importers`) loads its trunk.

    Returns a module whose ``forward`` maps ``(B, 3, H, W)`` to the ``layer4`` map ``(B, out_channels, h, w)``.
    """
    model = BACKBONES.get(name)(last_stride=last_stride)
    reader = checkpoint_reader(pretrained)
    if reader is not None:  # another toolkit's re-ID checkpoint: its trunk, no fc
        model.drop_fc()
        model.load_state_dict(reader.backbone_state(pretrained, name, last_stride), strict=True)
        return model
    if pretrained:
        load_pretrained(model, pretrained)
    model.drop_fc()
    return model

