"""BoT baseline, the "Base" of ES-Net (spec §0, §1.8): backbone (last stride 1) -> pooling -> BNNeck -> classifier.

Train: ``model(images (B, 3, H, W), pids (B,))`` -> ``{"ce": ..., "triplet": ...}`` (CE on the logits of the
post-BN feature ``f_i``, batch-hard triplet on the pre-BN ``f_t``; a zero weight in ``loss`` drops the term, e.g.
ES-Net's CE-only "Base" is ``loss.triplet_weight: 0``). Eval: ``model(images)`` -> ``[f_i (B, C)]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Union

from torch import Tensor, nn

from esreid.config import ModelConfig
from esreid.losses import branch_losses
from esreid.models import MODELS
from esreid.models.backbones import build_backbone
from esreid.models.neck import BNNeck
from esreid.models.pooling import pooling_for


@dataclass
class BaselineConfig(ModelConfig):
    name: str = "baseline"
    pooling: str = "gap"  # gap | gmp | gem | ppool
    ppool_init: float = 3.0  # initial exponent of a learnable pooling (gem p / ppool l); spec §7 #7


@MODELS.register("baseline", config=BaselineConfig)
class Baseline(nn.Module):
    def __init__(self, cfg: BaselineConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.pool = pooling_for(cfg.pooling, cfg.ppool_init, "model.pooling")
        self.backbone = build_backbone(cfg.backbone, cfg.last_stride, cfg.pretrained)
        self.neck = BNNeck(self.backbone.out_channels, num_classes)

    def forward(self, images: Tensor, pids: Optional[Tensor] = None) -> Union[Dict[str, Tensor], List[Tensor]]:
        if self.training and pids is None:
            raise ValueError("Baseline in train mode needs pids: call model(images, pids) or model.eval()")
        f_t = self.pool(self.backbone(images))  # (B, C) pre-BN
        f_i, logits = self.neck(f_t)  # (B, C) post-BN, (B, N) in train mode
        if not self.training:
            return [f_i]
        return branch_losses(logits, f_t, pids, self.cfg.loss)

    def no_weight_decay(self) -> Set[str]:
        """The learnable pooling exponent (GeM p / P-pooling l) gets no weight decay (spec §1.5)."""
        own = self.pool.no_weight_decay() if hasattr(self.pool, "no_weight_decay") else set()
        return {f"pool.{n}" for n in own}

    def stats(self) -> Dict[str, float]:
        """The pooling exponent, e.g. ``{"pool_l": 3.0}`` for P-pooling; empty for GAP / GMP."""
        own = self.pool.stats() if hasattr(self.pool, "stats") else {}
        return {f"pool_{k}": v for k, v in own.items()}

