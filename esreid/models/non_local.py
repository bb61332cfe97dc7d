"""The non-local block in AGW's dot-product form (Wang et al., CVPR 2018; Ye et al., TPAMI 2021; docs/methods.md §8.1).

For a map ``x`` (B, C, H, W) with N = H·W positions and C' inner channels:

    θ = W_θ x,  φ = W_φ x,  g = W_g x             1x1 convolutions C -> C' (with bias), each (B, C', N)
    f_ij = θ_i · φ_j / N                          pairwise affinity, dot product scaled by 1/N (no softmax)
    y_i  = Σ_j f_ij g_j                           (B, C', N)
    z    = BN(W_z y) + x                          1x1 convolution C' -> C, BatchNorm2d with weight and bias 0

The zero-initialised BatchNorm makes a new block the identity, so it can be inserted into an ImageNet-pretrained trunk
without changing its output (:mod:`esreid.models.backbones.resnet_nl`).

AGW's code (``modeling/layer/non_local.py`` of ReID-Survey @38f5912) sets ``inter_channels = reduc_ratio //
reduc_ratio``, i.e. **C' = 1** whatever its ``reduc_ratio``: AGW as published has one-channel blocks, and that is
what ``resnet50_nl`` builds (docs/methods.md §8.1, §7 #24). ``inner`` is therefore an explicit argument.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NonLocal(nn.Module):
    """Non-local block (module docstring): ``(B, C, H, W) -> (B, C, H, W)`` with ``inner`` = C' channels (AGW: 1)."""

    def __init__(self, channels: int, inner: int):
        super().__init__()
        if inner < 1:
            raise ValueError(f"NonLocal: inner must be >= 1, got {inner}")
        self.inner = inner
        self.theta = nn.Conv2d(channels, self.inner, kernel_size=1)
        self.phi = nn.Conv2d(channels, self.inner, kernel_size=1)
        self.g = nn.Conv2d(channels, self.inner, kernel_size=1)
        self.W = nn.Sequential(nn.Conv2d(self.inner, channels, kernel_size=1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.W[1].weight)  # the block starts as the identity
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2)  # (B, C', N)
        phi = self.phi(x).flatten(2)
        g = self.g(x).flatten(2)
        f = torch.bmm(theta.transpose(1, 2), phi) / (h * w)  # (B, N, N): f_ij = θ_i · φ_j / N
        y = torch.bmm(g, f.transpose(1, 2))  # (B, C', N): y_i = Σ_j f_ij g_j
        return self.W(y.view(b, self.inner, h, w)) + x
