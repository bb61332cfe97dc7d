"""IDE, the plain ResNet re-ID model (Zheng et al., "Person Re-identification: Past, Present and Future", 2016):
backbone -> GAP -> identity classifier, the test feature being the pooled vector. It is torchreid's ``resnet50``
(last stride 2, no neck) and, with ``reduction: 512``, its ``resnet50_fc512`` (last stride 1, Linear + BatchNorm1d
+ ReLU to 512 before the classifier: :class:`~esreid.models.heads.ReductionHead`). Checkpoints of both import
(:mod:`esreid.models.importers`).

Train: ``forward_train(images (B, 3, H, W), pids (B,))`` -> ``{"ce": ...}`` (torchreid's softmax loss: cross-entropy
with label smoothing 0.1; ``loss.triplet_weight > 0`` adds the batch-hard triplet on the same feature).
Eval: ``features(images)`` -> ``[f (B, C or D)]``; torchreid's test: no flip, no L2 normalisation, Euclidean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from esreid.config import BACKBONE_NAMES, POOLING_NAMES, LossConfig, ModelConfig, param
from esreid.models import MODELS
from esreid.models.backbones import build_backbone
from esreid.models.base import RetrievalRule
from esreid.models.baseline import OneHeadModel
from esreid.models.heads import LinearHead, ReductionHead
from esreid.models.pooling import build_pooling


@dataclass
class IDEConfig(ModelConfig):
    name: str = "ide"
    backbone: str = param("resnet50", choices=BACKBONE_NAMES)
    last_stride: int = param(2, ge=1, le=2)  # torchreid's resnet50 keeps the ImageNet stride
    pooling: str = param("gap", choices=POOLING_NAMES)
    ppool_init: float = param(3.0, gt=1)
    reduction: int = param(0, ge=0)  # 0: the pooled vector is the feature; D > 0: Linear + BN + ReLU to D (fc512)
    loss: LossConfig = field(default_factory=lambda: LossConfig(label_smoothing=0.1, triplet_weight=0.0))


@MODELS.register("ide", config=IDEConfig)
class IDE(OneHeadModel):
    """``backbone`` -> ``head`` (:class:`LinearHead`, or :class:`ReductionHead` when ``reduction > 0``). One branch,
    ``global``."""

    default_retrieval = RetrievalRule(flip=False, normalize=False, metric="euclidean")  # torchreid's test defaults

    def __init__(self, cfg: IDEConfig, num_classes: int, retrieval: Optional[RetrievalRule] = None):
        super().__init__(cfg, num_classes, retrieval)
        self.backbone = build_backbone(cfg.backbone, cfg.last_stride, cfg.pretrained)
        pool, channels = build_pooling(cfg.pooling, cfg.ppool_init), self.backbone.out_channels
        self.head = (ReductionHead(pool, channels, cfg.reduction, num_classes) if cfg.reduction
                     else LinearHead(pool, channels, num_classes))
