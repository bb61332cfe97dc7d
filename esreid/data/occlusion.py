"""Occluded queries for evaluation under occlusion (``test.occlusion``): the occluder shapes (:data:`OCCLUDERS`),
the fill and the occluded image source. The condition grammar (``none``, ``kind:F``) and the seeding that makes every
model see the same occluded pixels are :mod:`esreid.config.occlusion` (:class:`~esreid.config.occlusion.Condition`,
checked when a config is loaded). The shapes:

* ``none``: the query as it is;
* ``random:F`` (0 < F < 1): one axis-aligned rectangle covering the fraction F of the image area at a random place.
  Its aspect ratio r = h / w is drawn log-uniformly in [1/3, 3] (Zhong et al.'s random-erasing range), then
  ``h = round(sqrt(F H W r))``, ``w = round(sqrt(F H W / r))``; a side longer than the image is clipped to it and the
  other side recomputed as ``round(F H W / side)``. So the covered area is ``h * w`` pixels, within rounding
  (``|h w - F H W| <= (h + w) / 2 + 1``) of F H W. The top-left corner is uniform over the places where the rectangle
  fits;
* ``lower:F``: the bottom ``round(F H)`` rows (an obstacle in front of the legs, the usual case in Occluded-DukeMTMC).

Fill value (``test.occlusion_fill``): ``mean`` (default) writes the per-channel ``data.mean`` (a pixel that is 0 after
normalisation, the neutral input of the network), ``black`` writes 0 (what ES-Net's BESM writes, docs/methods.md §7
#6: a model trained with BESM has seen black patches, so ``black`` measures robustness to its own training patches
as well as to the missing evidence). Occlusion is applied to the decoded, resized uint8 image ``(3, H, W)``, after
the cache when ``data.cache`` is on, before the test transform.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from esreid.config.occlusion import Box, Condition
from esreid.registry import Registry

OCCLUDERS = Registry("occlusion")  # kind -> box(height, width, fraction, rng); parsed by esreid.config.occlusion
ASPECT_RANGE = (1 / 3, 3.0)


@OCCLUDERS.register("none")
def _none(height: int, width: int, fraction: Optional[float], rng: np.random.Generator) -> Optional[Box]:
    return None


@OCCLUDERS.register("random")
def random_box(height: int, width: int, fraction: float, rng: np.random.Generator) -> Box:
    """A rectangle of area ``fraction * height * width`` (within rounding) at a random place (module docstring)."""
    area = fraction * height * width
    r = math.exp(rng.uniform(math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])))
    h, w = round(math.sqrt(area * r)), round(math.sqrt(area / r))
    if h > height:
        h, w = height, round(area / height)
    if w > width:
        w, h = width, min(height, round(area / width))
    h, w = max(h, 1), max(w, 1)
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return top, left, h, w


@OCCLUDERS.register("lower")
def lower_box(height: int, width: int, fraction: float, rng: np.random.Generator) -> Box:
    """The bottom ``round(fraction * height)`` rows, full width."""
    h = max(1, round(fraction * height))
    return height - h, 0, h, width


def fill_value(fill: str, mean: Sequence[float]) -> torch.Tensor:
    """uint8 ``(3,)`` written into the rectangle: ``mean`` -> ``round(255 * data.mean)``, ``black`` -> 0."""
    if fill == "black":
        return torch.zeros(3, dtype=torch.uint8)
    return torch.tensor([round(255 * m) for m in mean], dtype=torch.uint8)


def occlude(image: torch.Tensor, box: Optional[Box], fill: torch.Tensor) -> torch.Tensor:
    """A copy of uint8 ``image`` ``(3, H, W)`` with ``box`` filled with ``fill`` ``(3,)`` (``image`` when None)."""
    if box is None:
        return image
    top, left, h, w = box
    out = image.clone()
    out[:, top : top + h, left : left + w] = fill[:, None, None]
    return out


class OccludedSource:
    """An image source (:mod:`esreid.data.loader`) whose image ``i`` is ``source[i]`` occluded under ``condition``,
    with ``names[i]`` the file name of item ``i`` and ``fill`` the uint8 fill ``(3,)``."""

    def __init__(self, source, names: Sequence[str], condition: Condition, fill: torch.Tensor):
        self.source, self.names, self.condition, self.fill = source, list(names), condition, fill

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = self.source[i]
        return occlude(image, self.condition.box(image.shape[1], image.shape[2], i, self.names[i]), self.fill)

