"""Diagnostic hooks, switched on by the ``diagnostics`` config section (docs/architecture.md, "Trainer hooks").

``erased_loss`` (ES-Net Fig. 3, "verification of motivation"): before each step, the loss the model would have on
BESM-erased copies of the batch, CG-RAM at the model's saliency layer (or ``diagnostics.layer``), logged as
``erased_loss`` next to the loss on the original images. Works for every registered model.

``cue_coverage`` (SaliencyTrap v2, for datasets that declare cue masks): after every epoch, on a few fixed training
batches, the share of the cue inside the region BESM would erase, the share of that region that is cue, and the
saliency mass on the cue (:func:`cue_shares`), as a ``cue_coverage`` record.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from esreid.config import invalid
from esreid.engine.hooks import HOOKS, HookBase
from esreid.erasing.besm import erase_fill, erased_loss_probe, salient_mask
from esreid.erasing.cgram import LayerError


@HOOKS.register("erased_loss")
class ErasedLossProbe(HookBase):
    """Fig. 3 probe: ``state.extra["erased_loss"]`` before every step; leaves the model unchanged."""

    def __init__(self, cfg: Any, seed: int):
        self.full_cfg, self.cfg = cfg, cfg.diagnostics
        self.fill = erase_fill(self.cfg.erase_value, cfg.data.mean, cfg.data.std)  # (3,), docs/methods.md §7 #6
        self.generator = torch.Generator().manual_seed(seed)  # BESM coin flips of the probe (checkpointed)

    def before_step(self) -> None:
        t = self.trainer
        batch = t.state.batch
        try:
            t.state.extra["erased_loss"] = erased_loss_probe(t.model, batch["images"], batch["pids"],
                                                             self.cfg.erase_ratio, self.cfg.erase_prob, self.generator,
                                                             self.cfg.layer or None,
                                                             fill=self.fill.to(batch["images"].device))
        except LayerError as e:  # the first step: nothing trained yet
            raise invalid(self.full_cfg, "diagnostics.layer", str(e)) from None

    def generators(self) -> Dict[str, torch.Generator]:
        return {"probe": self.generator}

# ----------------------------------------------------------------------------------------------------------------
# Cue coverage (SaliencyTrap v2): where BESM's erasures and the saliency maps fall, for datasets with cue masks
# ----------------------------------------------------------------------------------------------------------------
COVERAGE_SEED = 20260  # the fixed PK batches the cue-coverage diagnostic measures on (the same for every model)


def cue_shares(maps: Tensor, masks: Tensor, ratio: float) -> Dict[str, float]:
    """Where BESM's erasures and the maps fall relative to the cue, pooled over the images.

    maps: (B, h, w) saliency maps (>= 0); masks: (B, H, W) bool cue masks of the images; ``ratio``: BESM's R. The
    erasure E of an image is Algorithm 1's with P = 1 (:func:`~esreid.erasing.besm.salient_mask`: the round(R*H*W)
    largest pixels of the bilinearly upsampled map M*; nothing for an all-zero map, as BESM). Returns
    ``cue_in_erased`` = |cue ∩ E| / |cue| (chance: R), ``erased_on_cue`` = |cue ∩ E| / |E| (chance: ``cue_area``),
    ``cue_area`` = |cue| / (B*H*W), and ``saliency_on_cue`` = the share of the upsampled maps' mass on cue pixels
    (the CG-RAM mass on the cue; chance: ``cue_area``). Sums over all images (an image with a hidden cue adds to E
    only); a ratio with a zero denominator is NaN.
    """
    size = tuple(masks.shape[-2:])
    upsampled = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    nonempty = maps.flatten(1).amax(dim=1) > 0
    erased = salient_mask(maps, size, ratio) & nonempty[:, None, None]
    cue = masks.bool()
    both, n_cue, n_erased = float((cue & erased).sum()), float(cue.sum()), float(erased.sum())
    mass = float(upsampled.sum())
    nan = float("nan")
    return {"cue_in_erased": both / n_cue if n_cue else nan, "erased_on_cue": both / n_erased if n_erased else nan,
            "cue_area": n_cue / cue.numel(), "saliency_on_cue": float((upsampled * cue).sum()) / mass if mass else nan}


@HOOKS.register("cue_coverage")
class CueCoverage(HookBase):
    """After every epoch, :func:`cue_shares` of the model's :meth:`~esreid.models.base.ReIDModel.training_saliency`
    (ES-Net: the ESB's CG-RAM that BESM erases by; other models: CG-RAM at their saliency layer) on
    ``diagnostics.cue_batches`` fixed PK batches of training images (un-augmented, the same for every model and
    seed: :data:`COVERAGE_SEED`), with R = ``diagnostics.erase_ratio``; emitted as a ``cue_coverage`` record
    (``metrics.jsonl``). For datasets that declare cue masks; changes nothing in the model."""

    def __init__(self, cfg: Any, seed: int):
        self.full_cfg, self.cfg = cfg, cfg.diagnostics
        self.batches: List[Tuple[Tensor, Tensor, Tensor]] = []  # (images (B, 3, H, W) normalised, pids, masks)

    def before_train(self) -> None:
        from esreid.data.loader import MaskSource, ReIDImageDataset, build_image_source
        from esreid.data.sampler import PKSampler
        from esreid.data.transforms import TestTransform

        t, data = self.trainer, self.full_cfg.data
        items = t.dataset.train
        source = ReIDImageDataset(items, build_image_source(data, items),
                                  masks=MaskSource(t.dataset.cue_masks(items), data.height, data.width))
        sampler = PKSampler([it.pid for it in items], data.ids_per_batch, data.instances, seed=COVERAGE_SEED)
        sampler.set_epoch(0)
        norm = TestTransform(data)
        for _, indices in zip(range(self.cfg.cue_batches), sampler):
            got = [source[i] for i in indices]
            images = norm(torch.stack([g["images"] for g in got])).to(t.device)
            pids = torch.tensor([g["pids"] for g in got], device=t.device)
            self.batches.append((images, pids, torch.stack([g["cue_masks"] for g in got]).to(t.device)))

    def after_epoch(self) -> None:
        t = self.trainer
        maps = torch.cat([t.model.training_saliency(images, pids) for images, pids, _ in self.batches])
        masks = torch.cat([m for _, _, m in self.batches])
        t.emit({"type": "cue_coverage", "epoch": t.state.epoch + 1, "erase_ratio": self.cfg.erase_ratio,
                **cue_shares(maps.cpu(), masks.cpu(), self.cfg.erase_ratio)})
