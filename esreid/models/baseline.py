"""BoT baseline, the "Base" of ES-Net (docs/methods.md §0, §1.8): backbone (last stride 1) -> pooling -> BNNeck.

Train: ``forward_train(images (B, 3, H, W), pids (B,))`` -> ``{"ce": ..., "triplet": ...}`` (CE on the logits of the
post-BN feature ``f_i``, batch-hard triplet on the pre-BN ``f_t``; a zero weight in ``loss`` drops the term, e.g.
ES-Net's CE-only "Base" is ``loss.triplet_weight: 0``). Eval: ``features(images)`` -> ``[f_i (B, C)]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from torch import Tensor, nn

from esreid.config import POOLING_NAMES, ModelConfig, param
from esreid.losses import branch_losses
from esreid.models import MODELS
from esreid.models.backbones import build_backbone
from esreid.models.base import ReIDModel, RetrievalRule
from esreid.models.heads import BNNeckHead, Head, HeadOutput
from esreid.models.pooling import build_pooling


@dataclass
class BaselineConfig(ModelConfig):
    name: str = "baseline"
    pooling: str = param("gap", choices=POOLING_NAMES)  # gap | gmp | gem | ppool
    ppool_init: float = param(3.0, gt=1)  # initial exponent of a learnable pooling (gem p / ppool l); §7 #7
    ppool_lr_mult: float = param(1.0, gt=0, le=1e6)  # its lr = ppool_lr_mult x solver.lr (docs/methods.md §1.5)


class OneHeadModel(ReIDModel):
    """A ``backbone`` and one ``head`` (the branch ``global``), built by the subclass: the trunk map goes to the head,
    the head's output to :func:`~esreid.losses.branch_losses`. BoT, AGW and IDE are this shape."""

    backbone: nn.Module
    head: Head

    def forward_features(self, images: Tensor) -> Tensor:
        return self.backbone(images)  # (B, C, h, w)

    def forward_head(self, x: Tensor) -> List[HeadOutput]:
        return [self.head(x)]

    def forward_train(self, images: Tensor, pids: Tensor) -> Dict[str, Tensor]:
        (out,) = self.forward_head(self.forward_features(images))
        return branch_losses(out, pids, self.cfg.loss)

    def heads(self) -> Dict[str, Head]:
        return {"global": self.head}

    def compile_regions(self) -> List[nn.Module]:
        return [self.backbone, *super().compile_regions()]


@MODELS.register("baseline", config=BaselineConfig)
class Baseline(OneHeadModel):
    """BoT: ``backbone`` -> ``head`` (pooling + BNNeck). One branch, named ``global``."""

    def __init__(self, cfg: BaselineConfig, num_classes: int, retrieval: Optional[RetrievalRule] = None):
        super().__init__(cfg, num_classes, retrieval)
        self.backbone = build_backbone(cfg.backbone, cfg.last_stride, cfg.pretrained)
        pool = build_pooling(cfg.pooling, cfg.ppool_init, cfg.ppool_lr_mult)
        self.head = BNNeckHead(pool, self.backbone.out_channels, num_classes)
