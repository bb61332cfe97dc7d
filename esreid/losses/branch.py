"""One branch's identity + triplet losses from a :class:`esreid.config.LossConfig`, shared by every method."""

from __future__ import annotations

from typing import Dict

import torch

from esreid.config import LossConfig
from esreid.losses.cross_entropy import cross_entropy
from esreid.losses.triplet import batch_hard_triplet


def branch_losses(
    logits: torch.Tensor, feats: torch.Tensor, pids: torch.Tensor, cfg: LossConfig, prefix: str = ""
) -> Dict[str, torch.Tensor]:
    """Weighted loss terms of one branch: ``{prefix+"ce": ce_weight·CE(logits), prefix+"triplet":
    triplet_weight·triplet(feats)}``; a term whose weight is 0 is left out (not computed).

    Args:
        logits: ``(B, N)`` classifier output (post-BN feature in BNNeck models).
        feats: ``(B, D)`` feature for the triplet loss (pre-BN ``f_t`` in BNNeck models).
        pids: ``(B,)`` training identities.
        prefix: distinguishes branches, e.g. ``"aib_"`` / ``"esb_"``.
    """
    terms: Dict[str, torch.Tensor] = {}
    if cfg.ce_weight:
        terms[prefix + "ce"] = cfg.ce_weight * cross_entropy(logits, pids, cfg.label_smoothing)
    if cfg.triplet_weight:
        terms[prefix + "triplet"] = cfg.triplet_weight * batch_hard_triplet(
            feats, pids, cfg.triplet_margin, cfg.soft_margin
        )
    return terms
