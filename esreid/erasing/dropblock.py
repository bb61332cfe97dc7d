"""Batch DropBlock (Dai et al., ICCV 2019, "Batch DropBlock Network"; docs/methods.md §2.2).

For a feature map ``X (B, C, H, W)`` in training mode::

    rh = round(ρ_h·H), rw = round(ρ_w·W)
    sx ~ UniformInt[0, H - rh], sy ~ UniformInt[0, W - rw]     drawn ONCE per forward: shared by all images, channels
    X' = X ⊙ Mask,  Mask[sx:sx+rh, sy:sy+rw] = 0, else 1         no 1/keep_prob rescaling; identity in eval mode

Unlike DropBlock (Ghiasi et al.) the dropped region is the same for the whole batch: re-ID crops are roughly aligned,
so the branch consistently loses one body band (persons: ρ_h = 0.33, ρ_w = 1.0, a full-width stripe of 8 rows of 24).

The region comes from ``self.generator`` (a CPU ``torch.Generator``), which the trainer saves in checkpoints, so a
resumed run drops the same regions as an uninterrupted one. ``round`` is Python's (half to even), as in the BDB code.
Under DDP every process owns a generator, but the trainer builds the model while the global RNG is seeded with
``cfg.seed`` on every rank, and each rank draws once per step: all ranks drop the same region, one per optimisation
step for the whole global batch (docs/methods.md §2.2's DataParallel pitfall avoided).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class BatchDropBlock(nn.Module):
    """Zero one ``round(ρ_h·H) x round(ρ_w·W)`` rectangle, the same for every image and channel of the batch.

    Args:
        height_ratio: ρ_h in (0, 1] (persons: 0.33, BDB code; the paper text is recalled as 0.3, docs/methods.md §7
        #15).
        width_ratio: ρ_w in (0, 1] (persons: 1.0; cars, CUB, SOP, In-Shop: 0.5 x 0.5).

    ``forward``: ``(B, C, H, W) -> (B, C, H, W)``; identity in eval mode.
    """

    def __init__(self, height_ratio: float = 0.33, width_ratio: float = 1.0):
        super().__init__()
        for key, value in (("height_ratio", height_ratio), ("width_ratio", width_ratio)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"BatchDropBlock {key}: expected a ratio in (0, 1], got {value!r}")
        self.height_ratio = height_ratio
        self.width_ratio = width_ratio
        # seeded from the global RNG, so a seeded run is reproducible; saved in checkpoints by the trainer
        self.generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))

    def region(self, height: int, width: int) -> Tuple[int, int, int, int]:
        """Draw the dropped rectangle ``(top, left, rh, rw)`` of an ``H x W`` map (advances ``self.generator``)."""
        rh = round(self.height_ratio * height)  # docs/methods.md §2.2 rh = round(ρ_h·H)
        rw = round(self.width_ratio * width)  # rw = round(ρ_w·W)
        top = int(torch.randint(0, height - rh + 1, (1,), generator=self.generator))  # sx ~ U{0..H-rh}
        left = int(torch.randint(0, width - rw + 1, (1,), generator=self.generator))  # sy ~ U{0..W-rw}
        return top, left, rh, rw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if x.dim() != 4:
            raise ValueError(f"BatchDropBlock expects a map of shape (B, C, H, W), got {tuple(x.shape)}")
        top, left, rh, rw = self.region(x.shape[2], x.shape[3])
        mask = x.new_ones(1, 1, x.shape[2], x.shape[3])
        mask[:, :, top : top + rh, left : left + rw] = 0
        return x * mask  # X' = X ⊙ Mask, no rescaling

    def extra_repr(self) -> str:
        return f"height_ratio={self.height_ratio}, width_ratio={self.width_ratio}"
