"""BESM: Batch Erasing Salient Method (ES-Net §III-C-2, Algorithm 1), batched, plus the Fig. 3 motivation probe.

Per image, with probability P (Algorithm 1 lines 1-2): upsample its CG-RAM map M to the image size (M*, line 4) and
set the round(R*H*W) pixels with the largest M* to 0 in every channel (lines 5-10). Choices (docs/methods.md §7 #6):
    * "set to 0" (§III-C-2: pixels "of the raw images") is written on the normalised tensor as ``fill``, chosen by
      name in :data:`ERASE_VALUES`: ``black`` (a raw pixel of 0: ``-mean/std`` per channel after normalisation, the
      literal reading and ES-Net's default) or ``mean`` (0 on the normalised tensor: the dataset's mean colour);
    * M* = bilinear upsampling, align_corners=False; ties among equal M* values are broken by ``torch.topk``;
    * an image whose map is identically 0 (no positive evidence) is left unchanged even if drawn; such images are
      reported (``Erased.empty``) so that the trainer can log how often it happens.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Iterator, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esreid.erasing.cgram import cgram_batch
from esreid.registry import Registry

ERASE_VALUES = Registry("erase value")  # name -> fill(mean (3,), std (3,)) -> (3,) value in the normalised tensor


@ERASE_VALUES.register("mean")
def _mean_fill(mean: Tensor, std: Tensor) -> Tensor:
    """0 on the normalised tensor: the dataset's mean colour (Random Erasing's and Cutout's fill in esreid)."""
    return torch.zeros_like(mean)


@ERASE_VALUES.register("black")
def _black_fill(mean: Tensor, std: Tensor) -> Tensor:
    """A raw pixel value of 0 (black) after normalisation: ``(0 - mean) / std`` per channel."""
    return -mean / std


def erase_fill(kind: str, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The per-channel value (3,) float32 that BESM writes into normalised images for the erase value ``kind``
    (:data:`ERASE_VALUES`), given the normalisation ``(x / 255 - mean) / std`` of the images."""
    mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    return ERASE_VALUES.get(kind)(mean_t, std_t)


class Erased(NamedTuple):
    """What :func:`besm` returns: ``images`` (B, 3, H, W) the erased copy; ``erased`` (B,) bool, the images that were
    erased; ``empty`` (B,) bool, the images drawn for erasing (coin < P) whose map was all zero (left unchanged)."""

    images: Tensor
    erased: Tensor
    empty: Tensor


def erase_count(ratio: float, height: int, width: int) -> int:
    """round(R*H*W), rounding halves up (Python's ``round`` would round 0.5 to even)."""
    return int(math.floor(ratio * height * width + 0.5))


def salient_mask(maps: Tensor, size: Tuple[int, int], ratio: float) -> Tensor:
    """The top-R pixels of the upsampled maps. maps: (B, h, w) -> bool (B, H, W) with round(R*H*W) True per image."""
    height, width = size
    upsampled = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)  # M*, line 4
    flat = upsampled.flatten(1)  # (B, H*W)
    k = erase_count(ratio, height, width)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, flat.topk(k, dim=1).indices, True)  # lines 5-7: top R of M*
    return mask.view(-1, height, width)


def besm(
    images: Tensor,
    maps: Tensor,
    ratio: float,
    prob: float,
    generator: Optional[torch.Generator] = None,
    fill: Union[float, Tensor] = 0.0,
) -> Erased:
    """Algorithm 1 on a batch.

    images: (B, 3, H, W) normalised; maps: (B, h, w) CG-RAM maps (>= 0); ``fill``: the value written, a scalar or one
    per channel (3,) (:func:`erase_fill`; 0.0 = the mean colour). Returns :class:`Erased`. ``generator`` (CPU) draws
    the per-image coin flips.
    """
    if not 0.0 <= ratio <= 1.0 or not 0.0 <= prob <= 1.0:
        raise ValueError(f"BESM: erase_ratio and erase_prob must lie in [0, 1], got R={ratio}, P={prob}")
    if maps.shape[0] != images.shape[0]:
        raise ValueError(f"BESM: {maps.shape[0]} maps for {images.shape[0]} images")
    coin = torch.rand(images.shape[0], generator=generator).to(images.device)  # line 1: P' = rand(0, 1)
    drawn = coin < prob  # line 2
    empty = drawn & (maps.flatten(1).amax(dim=1) <= 0)  # an all-zero map ranks nothing: left unchanged
    chosen = drawn & ~empty
    mask = salient_mask(maps, images.shape[-2:], ratio) & chosen[:, None, None]  # (B, H, W)
    value = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)  # (1, 1|3, 1, 1)
    return Erased(torch.where(mask[:, None], value, images), chosen, empty)  # line 8: I(x, y) <- 0


# ----------------------------------------------------------------------------------------------------------------
# Fig. 3 "verification of motivation": the loss of a model on BESM-erased copies of the batch it trains on
# ----------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def frozen_state(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every buffer (BatchNorm running statistics, counters) and the model's own RNGs (``generators()``) on
    exit, so a train-mode probe leaves no trace: a run with the probe trains exactly like one without it."""
    buffers = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    rngs = {name: g.get_state() for name, g in model.generators().items()}
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(buffers[name])
        for name, g in model.generators().items():
            g.set_state(rngs[name])


def erased_loss_probe(
    model: nn.Module,
    images: Tensor,
    pids: Tensor,
    ratio: float,
    prob: float,
    generator: Optional[torch.Generator] = None,
    layer: Optional[Union[str, nn.Module]] = None,
    loss_fn: Optional[Callable[[Dict[str, Tensor]], Tensor]] = None,
    fill: Union[float, Tensor] = 0.0,
) -> float:
    """The loss a :class:`~esreid.models.base.ReIDModel` would have on BESM-erased copies of ``images`` (ES-Net
    Fig. 3); changes nothing in the model.

    CG-RAM runs at ``layer`` (default: the model's ``saliency_layer``) with the batch's easiest positives (eq. 5), the
    batch is erased with Algorithm 1 (writing ``fill``, see :func:`besm`), and the loss terms of
    ``model.forward_train(erased, pids)`` are summed (or reduced by ``loss_fn``) without gradients; buffers and RNGs
    of the model are restored afterwards. Called on each batch before the ordinary step on the full images
    (:class:`esreid.engine.diagnostics.ErasedLossProbe`).
    """
    maps = cgram_batch(model, images, pids, layer)
    erased = besm(images, maps, ratio, prob, generator, fill).images
    with torch.no_grad(), frozen_state(model):
        losses = model.forward_train(erased, pids)
    total = loss_fn(losses) if loss_fn else sum(losses.values())
    return float(total)
