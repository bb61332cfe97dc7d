"""ResNet-50s as the re-ID toolkits' own code builds them, so that their checkpoints give their features here
(:mod:`esreid.models.importers`). Keys are torchvision's (as every other backbone); only the stem and the non-local
width differ from :mod:`esreid.models.backbones.resnet` / :mod:`esreid.models.backbones.resnet_nl` (whose
``resnet50_nl`` is AGW's official network itself, mangye16/ReID-Survey's ``ResNetNL``: no stem ReLU, one-channel
non-local blocks):

=========================  ==========================================================================================
backbone                   differs from torchvision's ResNet-50 in
=========================  ==========================================================================================
``resnet50_fastreid``      fast-reid's ``build_resnet_backbone``: stem max-pool ``MaxPool2d(3, 2, ceil_mode=True)``
                           without padding
``resnet50_nl_fastreid``   the same stem, non-local blocks after the last 2 blocks of layer2 and the last 3 of layer3
                           with one inner channel (fast-reid's ``Non_local``: ``inter_channels = reduc_ratio //
                           reduc_ratio``), fast-reid AGW
``resnet50_bot``           reid-strong-baseline's ``ResNet``: no ReLU after the stem's ``bn1`` (commented out there)
=========================  ==========================================================================================

They train like any backbone (``model.backbone: resnet50_fastreid``) and load torchvision's ImageNet weights
(``imagenet="resnet50"``; non-local blocks start as the identity).
"""

from __future__ import annotations

from esreid.models.backbones import BACKBONES
from esreid.models.backbones.resnet import Bottleneck, ResNet, stage_channels
from esreid.models.backbones.resnet_nl import ResNetNL

_R50 = dict(channels=stage_channels((64, 128, 256, 512), 4), imagenet="resnet50")


@BACKBONES.register("resnet50_fastreid", **_R50)
def resnet50_fastreid(last_stride: int = 1) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), last_stride=last_stride, stem="fastreid")


@BACKBONES.register("resnet50_nl_fastreid", **_R50)
def resnet50_nl_fastreid(last_stride: int = 1) -> ResNetNL:
    return ResNetNL(Bottleneck, (3, 4, 6, 3), last_stride=last_stride, non_local=(0, 2, 3, 0), inner=1,
                    stem="fastreid")


@BACKBONES.register("resnet50_bot", **_R50)
def resnet50_bot(last_stride: int = 1) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), last_stride=last_stride, stem="no_relu")

