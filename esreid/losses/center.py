"""Centre loss (Wen et al., ECCV 2016) as AGW trains it (ReID-Survey @38f5912, ``modeling/layer/center_loss.py``,
``tools/train.py``; docs/methods.md §8.3-§8.4).

    L_center = (1/B) Σ_i ||f_i - c_{y_i}||²          f_i: the pre-BN feature, c: one learnable centre per identity

AGW adds ``CENTER_LOSS_WEIGHT`` (5e-4) x L_center to its loss and trains the centres with their own SGD (lr
``CENTER_LR`` = 0.5, no momentum, no decay, no schedule) on the gradient divided back by the weight before the step,
i.e. ``c -= 0.5 · ∂L_center/∂c``. esreid gets the same step from the weighted term's gradient with SGD at
``lr = center_lr / center_weight`` (:meth:`CenterLoss.sgd_lr`), declared through the model contract
(``ReIDModel.sgd_params``). AGW computes the distances as ``||f||² + ||c||² - 2<f, c>`` and clamps each of the B·N
masked entries at 1e-12 (adding (N - 1)·1e-12 to the loss); esreid takes the difference directly (no cancellation).
"""

from __future__ import annotations

import torch
from torch import nn


def center_loss(feats: torch.Tensor, pids: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``mean_i ||f_i - c_{y_i}||²``. feats: ``(B, D)``; pids: ``(B,)`` in ``[0, N)``; centers: ``(N, D)`` -> scalar
    (float32 at least)."""
    if feats.dim() != 2 or pids.shape != feats.shape[:1] or centers.dim() != 2 or centers.shape[1] != feats.shape[1]:
        raise ValueError(f"center_loss: expected feats (B, D), pids (B,), centers (N, D); got {tuple(feats.shape)}, "
                         f"{tuple(pids.shape)}, {tuple(centers.shape)}")
    dtype = torch.promote_types(feats.dtype, torch.float32)
    with torch.autocast(device_type=feats.device.type, enabled=False):
        diff = feats.to(dtype) - centers.to(dtype)[pids]
        return diff.pow(2).sum(dim=1).mean()


class CenterLoss(nn.Module):
    """The centres ``(num_classes, dim)`` (``centers``, initialised N(0, 1) as AGW's ``torch.randn``) and the loss."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, dim))

    def forward(self, feats: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        return center_loss(feats, pids, self.centers)

    @staticmethod
    def sgd_lr(center_lr: float, weight: float) -> float:
        """The SGD lr on the gradient of ``weight`` x L_center that makes AGW's step ``c -= center_lr · ∂L/∂c``."""
        return center_lr / weight
