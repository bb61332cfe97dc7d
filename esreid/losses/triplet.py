"""Triplet losses on Euclidean distances of un-normalised features, chosen by ``loss.triplet`` (:data:`TRIPLETS`):

* ``batch_hard``: the batch-hard triplet (Hermans et al.; BoT, ES-Net, BDB, PMM; docs/methods.md §0);
* ``weighted``: AGW's weighted-regularisation triplet (Ye et al., TPAMI 2021; docs/methods.md §8.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from esreid.registry import Registry

if TYPE_CHECKING:
    from esreid.config import LossConfig

TRIPLETS = Registry("triplet loss")  # name -> loss(feats (B, D), pids (B,), cfg: LossConfig) -> scalar


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """``(B, D) -> (B, B)`` Euclidean distances ``sqrt(clamp(||x_i||² + ||x_j||² - 2<x_i, x_j>, 1e-12))``, float32.

    The clamp keeps the square root differentiable on the diagonal and for duplicates. The diagonal is set to
    exactly 0 before the clamp (the expansion leaves float32 cancellation noise of order ``1e-6·||x||²`` there).
    Autocast is disabled: in bf16 the ``||x||² - 2<x, x'>`` cancellation would leave errors of order ``0.01·||x||``.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        sq = x.pow(2).sum(dim=1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())
        eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
        return d2.masked_fill(eye, 0.0).clamp(min=1e-12).sqrt()


def _pairs(feats: torch.Tensor, pids: torch.Tensor, name: str):
    """Distances ``(B, B)``, positive and negative masks ``(B, B)`` (positives exclude the anchor itself) and the
    anchors ``(B,)`` that have both; raises ``ValueError`` for bad shapes or a batch where no anchor qualifies."""
    if feats.dim() != 2 or pids.shape != feats.shape[:1]:
        raise ValueError(f"{name}: expected feats (B, D) and pids (B,), got {tuple(feats.shape)} and "
                         f"{tuple(pids.shape)}")
    dist = pairwise_euclidean(feats)
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(len(pids), dtype=torch.bool, device=pids.device)
    pos, neg = same & ~eye, ~same
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not bool(valid.any()):
        raise ValueError(f"{name}: the batch needs >= 2 identities, one of them with >= 2 images "
                         f"(got pids {pids.tolist()})")
    return dist, pos, neg, valid


def batch_hard_triplet(
    feats: torch.Tensor, pids: torch.Tensor, margin: float = 0.3, soft_margin: bool = False
) -> torch.Tensor:
    """``mean_i max(0, d_ap(i) - d_an(i) + margin)`` or, with ``soft_margin``, ``mean_i log(1 + exp(d_ap - d_an))``.

    ``d_ap(i)`` = largest distance to another image of the same identity, ``d_an(i)`` = smallest distance to an
    image of another identity. Anchors lacking a positive or a negative in the batch are left out of the mean.

    Args:
        feats: ``(B, D)`` features (pre-BN in BoT / ES-Net).
        pids: ``(B,)`` identity labels.
    Returns:
        scalar.
    """
    dist, pos, neg, valid = _pairs(feats, pids, "batch_hard_triplet")
    d_ap = dist.masked_fill(~pos, float("-inf")).amax(dim=1)[valid]
    d_an = dist.masked_fill(~neg, float("inf")).amin(dim=1)[valid]
    if soft_margin:
        return F.softplus(d_ap - d_an).mean()  # log(1 + exp(d_ap - d_an)), overflow-free
    return (d_ap - d_an + margin).clamp(min=0).mean()


def weighted_regularized_triplet(feats: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """AGW's weighted-regularisation triplet (Ye et al., TPAMI 2021), ``mean_i log(1 + exp(Σ_j w⁺_ij d_ij -
    Σ_k w⁻_ik d_ik))`` with softmax weights over the anchor's positives ``j`` (same identity, not the anchor) and
    negatives ``k``: ``w⁺_ij = exp(d_ij) / Σ_j' exp(d_ij')``, ``w⁻_ik = exp(-d_ik) / Σ_k' exp(-d_ik')``. No margin;
    the weights are differentiated. Distances and the anchors that count are those of :func:`batch_hard_triplet`
    (docs/methods.md §8.3 lists where AGW's code differs).

    Args:
        feats: ``(B, D)`` features (pre-BN in AGW's BNNeck).
        pids: ``(B,)`` identity labels.
    Returns:
        scalar.
    """
    dist, pos, neg, valid = _pairs(feats, pids, "weighted_regularized_triplet")
    dist, pos, neg = dist[valid], pos[valid], neg[valid]  # (V, B)
    w_pos = torch.softmax(dist.masked_fill(~pos, float("-inf")), dim=1)  # 0 outside the positives
    w_neg = torch.softmax((-dist).masked_fill(~neg, float("-inf")), dim=1)
    d_pos = (w_pos * dist).sum(dim=1)  # soft furthest positive
    d_neg = (w_neg * dist).sum(dim=1)  # soft closest negative
    return F.softplus(d_pos - d_neg).mean()


@TRIPLETS.register("batch_hard")
def _batch_hard(feats: torch.Tensor, pids: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    return batch_hard_triplet(feats, pids, cfg.triplet_margin, cfg.soft_margin)


@TRIPLETS.register("weighted")
def _weighted(feats: torch.Tensor, pids: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    return weighted_regularized_triplet(feats, pids)
