"""The documented rule that fills a peer's model with weights, shared by ``make_fixtures.py`` (which runs the peer's
code) and ``tests/test_importers.py`` (which regenerates the same checkpoint without it).

Tensor number ``i`` of the peer's ``state_dict()`` (in its order) with name ``key`` and shape ``shape`` is drawn from
``torch.Generator().manual_seed(SEED + i)``, by kind, so that every part matters (BatchNorm is not the identity):

* ``num_batches_tracked``: 0 (int64);
* ``running_var``: ``0.5 + U(0, 1)``; ``running_mean``: ``0.1 N(0, 1)``;
* a tensor with 2 or more dimensions (convolution / linear weight): ``N(0, 1) / sqrt(fan_in)``, fan_in =
  ``prod(shape[1:])``;
* a GeM exponent (name ending ``.p``): ``2.5 + U(0, 1)``;
* the scale of a non-local block's output BatchNorm (``W.1.weight``, zero at initialisation in every implementation):
  ``0.05 U(0, 1)`` (the block is quadratic in its input; unit scales overflow float32 after a few blocks);
* any other 1-D ``weight`` (BatchNorm scale): ``0.75 + 0.5 U(0, 1)``; a 1-D ``bias``: ``0.1 N(0, 1)``.

The batch: ``BATCH`` uint8 images drawn from ``torch.Generator().manual_seed(BATCH_SEED)`` (``torch.randint(0, 256)``).
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch

SEED = 20_260_000
BATCH_SEED = 7
BATCH = (2, 3, 64, 32)  # (B, 3, H, W): two 64x32 images
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, every peer's default


def seeded_tensor(index: int, key: str, shape: Sequence[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED + index)
    shape = tuple(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=g)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    if key.endswith("W.1.weight"):
        return 0.05 * torch.rand(shape, generator=g)
    if key.endswith(".p"):
        return 2.5 + torch.rand(shape, generator=g)
    if key.endswith("weight"):
        return 0.75 + 0.5 * torch.rand(shape, generator=g)
    return 0.1 * torch.randn(shape, generator=g)


def seeded_state(keys: Sequence[Tuple[str, Sequence[int]]]) -> Dict[str, torch.Tensor]:
    """The state dict of ``keys`` (``(name, shape)`` in the peer's order) filled by the rule above."""
    return {key: seeded_tensor(i, key, shape) for i, (key, shape) in enumerate(keys)}


def batch() -> torch.Tensor:
    """The fixed batch, uint8 ``BATCH``."""
    return torch.randint(0, 256, BATCH, generator=torch.Generator().manual_seed(BATCH_SEED), dtype=torch.uint8)


def normalised(images: torch.Tensor) -> torch.Tensor:
    """``(x / 255 - mean) / std``: what reid-strong-baseline, AGW and torchreid feed their models (ToTensor +
    Normalize)."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std
