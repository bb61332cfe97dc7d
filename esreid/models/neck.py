"""BNNeck (BoT; spec §0): ``f_t -> BatchNorm1d (bias frozen at 0) -> f_i -> bias-free Linear -> logits``.

The triplet loss uses the pre-BN ``f_t``, cross-entropy the logits of the post-BN ``f_i``; ``f_i`` is the test
feature.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn


class BNNeck(nn.Module):
    """Args: ``dim`` feature size D, ``num_classes`` training identities N.

    ``forward(f_t (B, D)) -> (f_i (B, D), logits (B, N) in train mode, None in eval mode)``.
    """

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"BNNeck needs at least one class, got num_classes={num_classes}")
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)  # no shift (BoT): the bias stays 0
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, f_t: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if f_t.dim() != 2 or f_t.shape[1] != self.bn.num_features:
            raise ValueError(f"BNNeck expects features (B, {self.bn.num_features}), got {tuple(f_t.shape)}")
        f_i = self.bn(f_t)
        return f_i, (self.classifier(f_i) if self.training else None)
