"""AGW (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021), ES-Net's
ref. [38] and the baseline of its Table VII (docs/methods.md §8).

The BoT network (:mod:`esreid.models.baseline`) with AGW's changes as its released code has them (ReID-Survey
@38f5912, ``configs/AGW_baseline.yml``), each a reusable piece:

* **non-local attention**: backbone ``resnet50_nl`` (:mod:`esreid.models.backbones.resnet_nl`), ResNet-50 without the
  stem ReLU, with a one-channel non-local block (:mod:`esreid.models.non_local`) after the last 2 blocks of ``layer2``
  and the last 3 of ``layer3``;
* **generalised-mean pooling** with a free learnable exponent p, init 3, weight-decayed (``pooling: gem``,
  :mod:`esreid.models.pooling`);
* **weighted-regularisation triplet** on the pre-BN feature (``loss.triplet: weighted``,
  :func:`esreid.losses.weighted_regularized_triplet`), with cross-entropy with label smoothing 0.1 on the BNNeck logits;
* **centre loss** on the pre-BN feature, weight ``center_weight`` (5e-4), its centres trained by their own SGD at
  ``center_lr`` (0.5) on the unweighted gradient (:mod:`esreid.losses.center`; ``center_weight: 0`` leaves it out).

Train: ``forward_train(images (B, 3, H, W), pids (B,))`` -> ``{"ce", "triplet", "center"}``. Eval:
``features(images)`` -> ``[f_i (B, C)]`` post-BN; AGW's retrieval rule: no flip, L2-normalised, cosine (its
``FEAT_NORM: on``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

from torch import Tensor

from esreid.config import BACKBONE_NAMES, POOLING_NAMES, LossConfig, param
from esreid.losses import CenterLoss, branch_losses
from esreid.models import MODELS
from esreid.models.base import RetrievalRule
from esreid.models.baseline import Baseline, BaselineConfig


@dataclass
class AGWConfig(BaselineConfig):
    """AGW's defaults (docs/methods.md §8); every field is the baseline's, so each AGW piece can be switched off."""

    name: str = "agw"
    backbone: str = param("resnet50_nl", choices=BACKBONE_NAMES)  # non-local ResNet-50 (§8.1)
    pooling: str = param("gem", choices=POOLING_NAMES)  # GeM, learnable p, init 3 = ppool_init (§8.2)
    loss: LossConfig = field(default_factory=lambda: LossConfig(label_smoothing=0.1, triplet="weighted"))  # §8.3
    center_weight: float = param(5e-4, ge=0)  # §8.3 [code] CENTER_LOSS_WEIGHT 0.0005 (0: no centre loss)
    center_lr: float = param(0.5, gt=0)  # §8.4 [code] CENTER_LR 0.5, the centres' own SGD


@MODELS.register("agw", config=AGWConfig)
class AGW(Baseline):
    """AGW: ``backbone`` (non-local ResNet) -> GeM -> BNNeck; CE-LS + weighted-regularisation triplet."""

    default_retrieval = RetrievalRule(flip=False, normalize=True, metric="cosine")  # AGW's test (§8.4)

    def __init__(self, cfg: AGWConfig, num_classes: int, retrieval: Optional[RetrievalRule] = None):
        super().__init__(cfg, num_classes, retrieval)
        self.center = CenterLoss(num_classes, self.backbone.out_channels) if cfg.center_weight > 0 else None

    def forward_train(self, images: Tensor, pids: Tensor) -> Dict[str, Tensor]:
        (out,) = self.forward_head(self.forward_features(images))
        terms = branch_losses(out, pids, self.cfg.loss)
        if self.center is not None:  # [code] criterion_total: + CENTER_LOSS_WEIGHT x center(global_feat)
            terms["center"] = self.cfg.center_weight * self.center(out.metric, pids)
        return terms

    def sgd_params(self) -> Dict[str, float]:
        if self.center is None:
            return {}
        return {"center.centers": CenterLoss.sgd_lr(self.cfg.center_lr, self.cfg.center_weight)}
