"""Diagnostic hooks, switched on by the ``diagnostics`` config section (docs/architecture.md, "Trainer hooks").

``erased_loss`` (ES-Net Fig. 3, "verification of motivation"): before each step, the loss the model would have on
BESM-erased copies of the batch, CG-RAM at the model's saliency layer (or ``diagnostics.layer``), logged as
``erased_loss`` next to the loss on the original images. Works for every registered model.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from esreid.config import invalid
from esreid.engine.hooks import HOOKS, HookBase
from esreid.erasing.besm import erase_fill, erased_loss_probe
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
