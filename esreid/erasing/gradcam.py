"""Grad-CAM of the true-identity logit (Selvaraju et al.), as PMM's guidance (docs/methods.md §3.2) and the map of
ES-Net's "Base+Grad-CAM Erasing" ablation (docs/methods.md §1.8, §7 #12).

For logits ``z`` (B, N), labels ``y`` (B,) and a feature map ``G`` (B, C, h, w) that ``z`` depends on:

    score = sum_i z[i, y_i]                                   (true-ID logit, summed over the batch)
    alpha_{i,k} = mean_{u,v} d score / d G_{i,k,u,v}           (spatially averaged gradient)
    C_i(u, v) = ReLU( sum_k alpha_{i,k} G_{i,k,u,v} )          (raw, not normalised: only rankings are used)

The gradient is taken with ``torch.autograd.grad`` to ``G`` only: parameters' ``.grad`` stay untouched (the official PMM
code calls ``score.backward()`` inside ``forward`` instead, docs/methods.md §3.2 pitfall), and nothing is run forward
again, so no BatchNorm statistic changes. In train mode a BatchNorm between ``G`` and ``z`` couples the samples, so
``alpha_i`` then also carries the other samples' logits - as in the official code, which differentiates the train-mode
graph too.
"""

from __future__ import annotations

import torch
from torch import Tensor


def true_class_score(logits: Tensor, pids: Tensor) -> Tensor:
    """score = sum_i logits[i, pids[i]] (docs/methods.md §3.2). logits (B, N), pids (B,) int64 -> scalar."""
    if logits.dim() != 2 or pids.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (B, N) and pids (B,), got {tuple(logits.shape)} and {tuple(pids.shape)}")
    return logits.gather(1, pids.long()[:, None]).sum()


def grad_cam(score: Tensor, g: Tensor, retain_graph: bool = True) -> Tensor:
    """Grad-CAM maps C (B, h, w), detached, of a scalar ``score`` w.r.t. the map ``g`` (B, C, h, w) it depends on.

    ``retain_graph=True`` (default) keeps the graph for the loss backward that follows in a training step. The
    weighting runs in float32 whatever the autocast dtype of ``g`` (the gradient itself has ``g``'s dtype).
    """
    if g.dim() != 4:
        raise ValueError(f"Grad-CAM needs a (B, C, h, w) feature map, got shape {tuple(g.shape)}")
    if not g.requires_grad:
        raise ValueError("Grad-CAM: the feature map is not part of a graph (run the forward with gradients enabled)")
    (grad,) = torch.autograd.grad(score, g, retain_graph=retain_graph)  # d score / d G
    alpha = grad.detach().float().mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1) alpha_{i,k}
    return torch.relu((alpha * g.detach().float()).sum(dim=1))  # (B, h, w) C_i
