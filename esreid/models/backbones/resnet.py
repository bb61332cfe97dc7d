"""ResNet-18/34/50/101 with torchvision's state-dict layout, plus tiny width-scaled variants for CPU tests.

Keys and shapes equal torchvision's ``resnet*`` (``conv1, bn1, layer1.0.conv1, ..., layer1.0.downsample.0/1,
fc.weight, fc.bias``; BatchNorm ``num_batches_tracked`` included), so ImageNet checkpoints load strictly.
Bottleneck puts the stride on the 3x3 ``conv2`` (torchvision "ResNet v1.5").

``last_stride`` sets the stride of ``layer4``'s first block (its strided conv and its downsample). Re-ID uses 1
(docs/methods.md §0): a 384x128 image gives a 24x8 ``layer4`` map instead of 12x4.

``forward(x)`` returns the ``layer4`` map; ``fc`` exists only so that ImageNet checkpoints load strictly and is
removed by :func:`esreid.models.backbones.build_backbone` after loading (re-ID models never use it).

``stem`` picks the stem's exact operations among :data:`STEMS` (torchvision's by default; the peers' variants exist so
that their checkpoints give their own features, :mod:`esreid.models.backbones.peers`).

Stage API (what methods use instead of splicing the trunk by attribute names): the named stages are
:data:`STAGES` = ``stem`` (conv1, bn1, relu, maxpool), ``layer1`` .. ``layer4`` (res_conv2 .. res_conv5 in the ResNet
paper's naming, docs/methods.md §0); :meth:`ResNet.stages` returns a contiguous range of them as one
``nn.Sequential`` that keeps torchvision's child names, and ``channels[stage]`` gives each stage's output width.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from esreid.models.backbones import BACKBONES, STAGES


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs; the stride sits on ``conv1``. ``(B, cin, H, W) -> (B, planes, H/s, W/s)``."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4 channels). ``(B, cin, H, W) -> (B, 4*planes, H/s, W/s)``."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Type[Union[BasicBlock, Bottleneck]]

# How the stem runs between conv1 + bn1 and layer1: (ReLU after bn1, max-pool padding, max-pool ceil_mode). Same keys.
STEMS: Dict[str, Tuple[bool, int, bool]] = {
    "torchvision": (True, 1, False),
    "fastreid": (True, 0, True),  # fast-reid's ResNet: MaxPool2d(3, 2, ceil_mode=True), no padding
    "no_relu": (False, 1, False),  # reid-strong-baseline / AGW's ResNet: no ReLU after bn1 ("missed relu")
}


class ResNet(nn.Module):
    """ResNet trunk. ``forward``: images ``(B, 3, H, W)`` -> ``layer4`` map ``(B, out_channels, H/s, W/s)`` with
    ``s = 16`` for ``last_stride=1`` and ``32`` for ``last_stride=2``.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        widths: ``planes`` of the four stages (torchvision: 64/128/256/512); the stem has ``widths[0]`` channels.
        last_stride: stride of ``layer4`` (1 or 2).
        layer3_stride: stride of ``layer3`` (2 as torchvision; 1 for an output stride of 8 with ``last_stride=1``).
        num_classes: rows of the ImageNet ``fc`` (kept only for strict checkpoint loading).
        stem: a name of :data:`STEMS` (what runs between ``bn1`` and ``layer1``).
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        last_stride: int = 1,
        num_classes: int = 1000,
        layer3_stride: int = 2,
        stem: str = "torchvision",
    ):
        super().__init__()
        if last_stride not in (1, 2) or layer3_stride not in (1, 2):
            raise ValueError(f"last_stride and layer3_stride must be 1 or 2, got {last_stride!r}, {layer3_stride!r}")
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"expected 4 stages, got layers={list(layers)} widths={list(widths)}")
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        relu, padding, ceil_mode = STEMS[stem]
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=padding, ceil_mode=ceil_mode)
        self.layer1 = self._make_layer(block, widths[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=layer3_stride)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=last_stride)
        self.out_channels = widths[3] * block.expansion
        self.channels: Dict[str, int] = stage_channels(widths, block.expansion)
        self.fc: Optional[nn.Linear] = nn.Linear(self.out_channels, num_classes)
        self._init_weights()

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        mods: List[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        # As torchvision: Kaiming-normal (fan_out, ReLU) convs, BN weight 1 / bias 0; fc keeps nn.Linear's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def drop_fc(self) -> None:
        """Remove the ImageNet classifier (its keys leave the state dict)."""
        self.fc = None

    def stages(self, first: str = "stem", last: str = "layer4") -> nn.Sequential:
        """Stages ``first`` .. ``last`` (inclusive, names from :data:`STAGES`) as one ``nn.Sequential`` of this
        trunk's own modules (shared, not copied), whose children keep torchvision's names: the stem contributes
        ``conv1, bn1, relu, maxpool``. ``(B, C_in, h, w) -> (B, channels[last], h', w')``."""
        i, j = STAGES.index(first), STAGES.index(last)
        if i > j:
            raise ValueError(f"stage range {first!r}..{last!r} is empty")
        names: List[str] = []
        for stage in STAGES[i : j + 1]:
            names += ["conv1", "bn1", "relu", "maxpool"] if stage == "stem" else [stage]
        return nn.Sequential(OrderedDict((n, getattr(self, n)) for n in names))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def stage_channels(widths: Sequence[int], expansion: int) -> Dict[str, int]:
    """Output channels of each stage: the stem has ``widths[0]``, stage i ``widths[i] * expansion``."""
    return {"stem": widths[0], **{f"layer{i + 1}": w * expansion for i, w in enumerate(widths)}}


@BACKBONES.register("resnet18", channels=stage_channels((64, 128, 256, 512), 1))
def resnet18(last_stride: int = 1) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), last_stride=last_stride)


@BACKBONES.register("resnet34", channels=stage_channels((64, 128, 256, 512), 1))
def resnet34(last_stride: int = 1) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), last_stride=last_stride)


@BACKBONES.register("resnet50", channels=stage_channels((64, 128, 256, 512), 4))
def resnet50(last_stride: int = 1) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), last_stride=last_stride)


@BACKBONES.register("resnet101", channels=stage_channels((64, 128, 256, 512), 4))
def resnet101(last_stride: int = 1) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), last_stride=last_stride)


@BACKBONES.register("resnet_tiny", channels=stage_channels((16, 32, 64, 128), 1))
def resnet_tiny(last_stride: int = 1) -> ResNet:
    """CPU demo/test trunk: BasicBlock, one block per stage, widths 16/32/64/128 (out 128 channels, ~0.3M params)."""
    return ResNet(BasicBlock, (1, 1, 1, 1), widths=(16, 32, 64, 128), last_stride=last_stride, num_classes=10)


@BACKBONES.register("resnet_tiny_os8", channels=stage_channels((16, 32, 64, 128), 1), halvings={"layer3": 0})
def resnet_tiny_os8(last_stride: int = 1) -> ResNet:
    """:func:`resnet_tiny` with ``layer3`` at stride 1 too: output stride 8 with ``last_stride=1`` (a 64x32 image gives
    an 8x4 ``layer4`` map instead of 4x2), the same parameters and torchvision-style keys (SaliencyTrap v2)."""
    return ResNet(BasicBlock, (1, 1, 1, 1), widths=(16, 32, 64, 128), last_stride=last_stride, num_classes=10,
                  layer3_stride=1)


@BACKBONES.register("resnet_tiny_bottleneck", channels=stage_channels((8, 16, 32, 64), 4))
def resnet_tiny_bottleneck(last_stride: int = 1) -> ResNet:
    """Tiny Bottleneck trunk (ResNet-50 block structure incl. downsample in layer1): widths 8/16/32/64, out 256."""
    return ResNet(Bottleneck, (1, 1, 1, 1), widths=(8, 16, 32, 64), last_stride=last_stride, num_classes=10)
