"""One branch's identity + triplet losses from a :class:`esreid.config.LossConfig`, shared by every method."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict

import torch

from esreid.config import LossConfig
from esreid.losses.cross_entropy import cross_entropy
from esreid.losses.triplet import TRIPLETS

if TYPE_CHECKING:  # models import this module: no import of esreid.models at run time
    from esreid.models.heads import HeadOutput


def branch_losses(out: HeadOutput, pids: torch.Tensor, cfg: LossConfig, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Weighted loss terms of one branch from its head's output: ``{prefix+"ce": ce_weight·CE(out.logits),
    prefix+"triplet": triplet_weight·triplet(out.metric)}`` (the triplet loss named by ``cfg.triplet``,
    :data:`esreid.losses.triplet.TRIPLETS`); a term whose weight is 0 is left out (not computed).

    Args:
        out: the branch's :class:`~esreid.models.heads.HeadOutput` in train mode: ``logits`` ``(B, N)`` (of the
            post-BN feature in BNNeck heads) and ``metric`` ``(B, D)`` (the pre-BN ``f_t`` in BNNeck heads).
        pids: ``(B,)`` training identities.
        prefix: distinguishes branches, e.g. ``"aib_"`` / ``"esb_"``.
    """
    terms: Dict[str, torch.Tensor] = {}
    if cfg.ce_weight:
        terms[prefix + "ce"] = cfg.ce_weight * cross_entropy(out.logits, pids, cfg.label_smoothing)
    if cfg.triplet_weight:
        terms[prefix + "triplet"] = cfg.triplet_weight * TRIPLETS.get(cfg.triplet)(out.metric, pids, cfg)
    return terms
