"""ResNets with non-local blocks after the last blocks of some stages: AGW's backbone (Ye et al., TPAMI 2021;
docs/methods.md §8.1). ``resnet50_nl``: ResNet-50 with a :class:`~esreid.models.non_local.NonLocal` block after each of
the last 2 blocks of ``layer2`` and the last 3 of ``layer3``, as AGW's code builds it (``modeling/backbones/
resnet_nl.py`` of ReID-Survey @38f5912): one inner channel per block (its ``reduc_ratio // reduc_ratio``) and **no
ReLU after the stem's BatchNorm** (its ``self.relu`` is commented out, "add missed relu"): ``conv1 -> bn1 -> maxpool``.
The stem keeps a ``relu`` child (an ``nn.Identity``) so that the stage API and the keys are those of every ResNet.

The trunk keeps torchvision's keys (``layer2.0.conv1.weight``, ...): a stage with non-local blocks is a
:class:`NonLocalStage` whose blocks keep their indices and whose non-local blocks are stored under
``<stage>.non_local.<block index>``. ImageNet checkpoints hold no such keys: they are listed in ``not_pretrained`` and
start from their own initialisation (the identity), the rest loads strictly. The stage API is unchanged, so every
method can use these backbones (``model.backbone: resnet50_nl``; ES-Net* of Table VII).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from esreid.models.backbones import BACKBONES
from esreid.models.backbones.resnet import BasicBlock, Block, Bottleneck, ResNet, stage_channels
from esreid.models.non_local import NonLocal


class NonLocalStage(nn.Module):
    """A ResNet stage: its blocks (children ``"0"`` .. ``"n-1"``, torchvision keys) with a non-local block after
    each block listed in ``after`` (``non_local.<i>``, ``inner`` channels wide).
    ``(B, C_in, h, w) -> (B, C, h', w')``."""

    def __init__(self, blocks: nn.Sequential, after: Sequence[int], channels: int, inner: int):
        super().__init__()
        self.depth = len(blocks)
        for i, block in enumerate(blocks):
            self.add_module(str(i), block)
        self.non_local = nn.ModuleDict({str(i): NonLocal(channels, inner) for i in sorted(after)})

    def __len__(self) -> int:
        return self.depth

    def __getitem__(self, index: int) -> nn.Module:
        """The block at ``index`` (as an ``nn.Sequential`` stage indexes)."""
        return self._modules[str(range(self.depth)[index])]

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.depth):
            x = self._modules[str(i)](x)
            if str(i) in self.non_local:
                x = self.non_local[str(i)](x)
        return x


class ResNetNL(ResNet):
    """:class:`~esreid.models.backbones.resnet.ResNet` whose stage ``layer<s+1>`` has a non-local block of ``inner``
    channels after each of its last ``non_local[s]`` blocks (AGW: ``(0, 2, 3, 0)``, ``inner=1``); ``stem`` as
    :class:`~esreid.models.backbones.resnet.ResNet`'s, AGW's ``"no_relu"`` by default (no ReLU after ``bn1``)."""

    def __init__(self, block: Block, layers: Sequence[int], widths: Sequence[int] = (64, 128, 256, 512),
                 last_stride: int = 1, num_classes: int = 1000, non_local: Sequence[int] = (0, 2, 3, 0),
                 inner: int = 1, stem: str = "no_relu"):
        super().__init__(block, layers, widths, last_stride, num_classes, stem=stem)
        if len(non_local) != 4 or any(not 0 <= n <= d for n, d in zip(non_local, layers)):
            raise ValueError(f"non_local={list(non_local)}: expected 4 counts, each at most its stage's blocks "
                             f"{list(layers)}")
        fresh = []
        for s, count in enumerate(non_local):
            if count:
                name = f"layer{s + 1}"
                blocks = getattr(self, name)
                setattr(self, name, NonLocalStage(blocks, range(len(blocks) - count, len(blocks)),
                                                  self.channels[name], inner))
                fresh.append(f"{name}.non_local.")
        self.not_pretrained = tuple(fresh)


@BACKBONES.register("resnet50_nl", channels=stage_channels((64, 128, 256, 512), 4), imagenet="resnet50")
def resnet50_nl(last_stride: int = 1) -> ResNetNL:
    """AGW's backbone as published: ResNet-50 without the stem ReLU + one-channel non-local blocks after the last 2
    blocks of layer2 and the last 3 of layer3 (module docstring)."""
    return ResNetNL(Bottleneck, (3, 4, 6, 3), last_stride=last_stride, non_local=(0, 2, 3, 0))


@BACKBONES.register("resnet_tiny_nl", channels=stage_channels((16, 32, 64, 128), 1))
def resnet_tiny_nl(last_stride: int = 1) -> ResNetNL:
    """CPU test trunk of AGW's shape: ``resnet_tiny`` without the stem ReLU + a one-channel non-local block after the
    (only) block of layer2 and of layer3."""
    return ResNetNL(BasicBlock, (1, 1, 1, 1), widths=(16, 32, 64, 128), last_stride=last_stride, num_classes=10,
                    non_local=(0, 1, 1, 0))
