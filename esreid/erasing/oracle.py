"""Oracle erasing: the positive control of the SaliencyTrap (benchmarks/saliency_trap.py), not a method of a paper.

BESM (Algorithm 1, :mod:`esreid.erasing.besm`) erases the round(R*H*W) pixels with the largest upsampled saliency.
The oracle hands it a map built from the dataset's exact cue mask instead of CG-RAM (ES-Net ``saliency: oracle``,
for datasets that declare cue masks, :meth:`esreid.data.base.ReIDDataset.declares_cue_masks`): 1 on every cue pixel
and, outside, a value that falls with the Chebyshev distance to the cue. Algorithm 1 is unchanged, so the oracle
erases with the same area R and probability P as BESM: the whole visible cue first (only R*H*W of its pixels when
the cue is larger), then the pixels closest to it, ring by ring, until R*H*W pixels are erased; an image whose cue
is hidden (all-zero mask) has an all-zero map and is left unchanged, as BESM leaves an image with an all-zero map.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from esreid.registry import Registry

MASK_SALIENCY = Registry("mask saliency")  # name -> map (B, H, W) from the cue masks (B, H, W) bool


@MASK_SALIENCY.register("oracle")
def oracle_map(masks: Tensor) -> Tensor:
    """masks: (B, H, W) bool (True = cue pixel) -> float32 (B, H, W): 1 on the cue; outside, ``(D - d) / D`` for a
    pixel at Chebyshev distance d (1 <= d < D) from the nearest cue pixel, D = max(H, W) (so every pixel of an image
    with a cue is > 0); all 0 for an image without a cue pixel. Upsampling to the image size (BESM's M*) is then the
    identity."""
    if masks.dim() != 3:
        raise ValueError(f"oracle erasing: masks must be (B, H, W), got {tuple(masks.shape)}")
    reach = max(masks.shape[-2:])
    grown = masks[:, None].float()  # (B, 1, H, W): pixels within distance d of the cue after d dilations
    total = grown.clone()
    for _ in range(1, reach):
        grown = F.max_pool2d(grown, kernel_size=3, stride=1, padding=1)  # one 3x3 dilation = Chebyshev distance + 1
        total += grown
    return total[:, 0] / reach
