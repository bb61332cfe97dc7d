"""Batch-hard triplet loss (Hermans et al.) on Euclidean distances of un-normalised features (docs/methods.md §0)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    if feats.dim() != 2 or pids.shape != feats.shape[:1]:
        raise ValueError(f"batch_hard_triplet: expected feats (B, D) and pids (B,), got {tuple(feats.shape)} "
                         f"and {tuple(pids.shape)}")
    dist = pairwise_euclidean(feats)
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(len(pids), dtype=torch.bool, device=pids.device)
    pos, neg = same & ~eye, ~same
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not bool(valid.any()):
        raise ValueError("batch_hard_triplet: the batch needs >= 2 identities, one of them with >= 2 images "
                         f"(got pids {pids.tolist()})")
    d_ap = dist.masked_fill(~pos, float("-inf")).amax(dim=1)[valid]
    d_an = dist.masked_fill(~neg, float("inf")).amin(dim=1)[valid]
    if soft_margin:
        return F.softplus(d_ap - d_an).mean()  # log(1 + exp(d_ap - d_an)), overflow-free
    return (d_ap - d_an + margin).clamp(min=0).mean()
