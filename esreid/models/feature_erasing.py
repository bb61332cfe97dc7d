"""Base + feature-level random erasing: the BoT baseline (docs/methods.md §0) whose training forward zeroes one random
rectangle of each image's ``layer4`` map, in every channel, with probability ``erase_prob``: Zhong et al.'s random
erasing (AAAI 2020) moved from the pixels to the features. A random, unguided counterpart of ES-Net's BESM, which erases
the *salient* pixels (docs/methods.md §1.4).

Per image (``x`` the layer4 map, h x w), drawn from the model's own RNG:
    with probability P: area a ~ U(area_min, area_max) * h * w, aspect r ~ U(aspect_min, aspect_max),
    rh = clamp(round(sqrt(a * r)), 1, h), rw = clamp(round(sqrt(a / r)), 1, w), top ~ U{0..h-rh}, left ~ U{0..w-rw},
    x[:, top:top+rh, left:left+rw] = 0
Train: ``forward_train(images (B, 3, H, W), pids (B,))`` -> ``{"ce", "triplet"}`` on the erased map (BNNeck as BoT).
Eval: ``features(images)`` -> ``[f_i (B, C)]``, no erasing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import Tensor

from esreid.config import Invalid, param
from esreid.losses import branch_losses
from esreid.models import MODELS
from esreid.models.base import RetrievalRule
from esreid.models.baseline import Baseline, BaselineConfig


@dataclass
class FeatureErasingConfig(BaselineConfig):
    name: str = "feature_erasing"
    erase_prob: float = param(0.5, ge=0, le=1)  # P: Zhong et al.'s default
    area: List[float] = param(factory=lambda: [0.02, 0.4], length=2, gt=0, le=1)  # erased fraction of the map
    # height / width of the rectangle; beyond 1e-3..1e3 a side is clamped to the map anyway (and sqrt(a / r) overflows)
    aspect: List[float] = param(factory=lambda: [0.3, 3.33], length=2, ge=1e-3, le=1e3)

    def check(self, cfg) -> None:
        super().check(cfg)
        for key in ("area", "aspect"):
            low, high = getattr(self, key)
            if low > high:
                raise Invalid(f"model.{key}", f"expected [min, max] with min <= max, got {getattr(self, key)}")


@MODELS.register("feature_erasing", config=FeatureErasingConfig)
class FeatureErasing(Baseline):
    """BoT (:class:`~esreid.models.baseline.Baseline`: backbone, pooling + BNNeck head, branch ``global``) with random
    erasing of the layer4 map in training (module docstring)."""

    def __init__(self, cfg: FeatureErasingConfig, num_classes: int, retrieval: Optional[RetrievalRule] = None):
        super().__init__(cfg, num_classes, retrieval)
        self.generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))  # the rectangles
        self._erased = torch.zeros(())

    def rectangles(self, batch: int, h: int, w: int) -> Tensor:
        """``(B, h, w)`` bool, True where each image's map is erased (advances ``self.generator``)."""
        cfg, g = self.cfg, self.generator
        u = torch.rand(batch, 5, generator=g)  # coin, area, aspect, top, left
        mask = torch.zeros(batch, h, w, dtype=torch.bool)
        for i in range(batch):
            if u[i, 0] >= cfg.erase_prob:
                continue
            area = (cfg.area[0] + (cfg.area[1] - cfg.area[0]) * float(u[i, 1])) * h * w
            ratio = cfg.aspect[0] + (cfg.aspect[1] - cfg.aspect[0]) * float(u[i, 2])
            rh = min(max(round(math.sqrt(area * ratio)), 1), h)
            rw = min(max(round(math.sqrt(area / ratio)), 1), w)
            top, left = int(u[i, 3] * (h - rh + 1)), int(u[i, 4] * (w - rw + 1))
            mask[i, top : top + rh, left : left + rw] = True
        return mask

    def forward_train(self, images: Tensor, pids: Tensor) -> Dict[str, Tensor]:
        x = self.forward_features(images)
        mask = self.rectangles(x.shape[0], x.shape[2], x.shape[3]).to(x.device)
        self._erased = mask.float().mean()
        return branch_losses(self.head(x.masked_fill(mask[:, None], 0.0)), pids, self.cfg.loss)

    def generators(self) -> Dict[str, torch.Generator]:
        return {"erasing": self.generator}

    def stats(self) -> Dict[str, float]:
        """Fraction of the last batch's maps erased, and the pooling exponent if learnable."""
        return {"erased_fraction": float(self._erased), **super().stats()}
