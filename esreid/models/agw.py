"""AGW (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021), ES-Net's
ref. [38] and the baseline of its Table VII (docs/methods.md §8).

The BoT network (:mod:`esreid.models.baseline`) with AGW's three changes, each a reusable piece:

* **non-local attention**: backbone ``resnet50_nl`` (:mod:`esreid.models.backbones.resnet_nl`), ResNet-50 with a
  non-local block (:mod:`esreid.models.non_local`) after the last 2 blocks of ``layer2`` and the last 3 of ``layer3``;
* **generalised-mean pooling** with a learnable exponent p, init 3 (``pooling: gem``, :mod:`esreid.models.pooling`);
* **weighted-regularisation triplet** on the pre-BN feature (``loss.triplet: weighted``,
  :func:`esreid.losses.weighted_regularized_triplet`), with cross-entropy with label smoothing 0.1 on the BNNeck logits.

Train: ``forward_train(images (B, 3, H, W), pids (B,))`` -> ``{"ce", "triplet"}``. Eval: ``features(images)`` ->
``[f_i (B, C)]`` post-BN; AGW's retrieval rule: no flip, L2-normalised, cosine (its ``FEAT_NORM: on``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from esreid.config import BACKBONE_NAMES, POOLING_NAMES, LossConfig, param
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


@MODELS.register("agw", config=AGWConfig)
class AGW(Baseline):
    """AGW: ``backbone`` (non-local ResNet) -> GeM -> BNNeck; CE-LS + weighted-regularisation triplet."""

    default_retrieval = RetrievalRule(flip=False, normalize=True, metric="cosine")  # AGW's test (§8.4)
