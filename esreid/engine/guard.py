"""The divergence guard: stop a run whose loss is non-finite or explodes, before garbage reaches a checkpoint.

A learning rate far too high (``solver.lr=1e6``) rarely produces NaN: the weights grow to ~1e6 and the loss to
~1e12 within a few steps and stay there, so without a guard such a run finishes "successfully" and overwrites every
checkpoint with garbage. :class:`DivergenceGuard` stops it with :class:`TrainingDiverged`, naming the epoch, the
iteration, the loss terms and the last good checkpoint, which it keeps.

The rule (configured by the ``guard`` section, :class:`esreid.config.GuardConfig`):

* **reference**: the loss of the run's first step, computed before any update, i.e. the untrained model's loss (about
  ``ln(number of identities)`` plus the triplet margin for a CE + triplet model). It is saved in checkpoints, so a
  resumed run keeps the reference of the run it continues (a checkpoint without one: the first step after resuming).
* a step is **high** when its loss exceeds ``divergence_factor`` (default 10) times the reference. A healthy run's
  loss falls below the reference and stays there; on the tiny test runs of every registered model, over several
  seeds, no step reaches even twice the reference (``tests/test_guard.py``), whereas ``solver.lr=10`` passes 10x
  within 5 steps and ``solver.lr=1e6`` at the second step.
* the run **stops** when
  - a loss term is not finite (always, even with ``divergence_factor: 0``);
  - ``patience`` (default 3) steps in a row are high: one odd batch does not stop a run, a divergence does (its loss
    does not come back);
  - an epoch ends on a high step or with a non-finite weight: the epoch's checkpoint is not written (the guard runs
    before :class:`~esreid.engine.hooks.CheckpointHook`), so ``last.pth`` keeps the last epoch that ended below the
    threshold.

Why the loss and not the gradient norm: the loss is already computed each step (the gradient norm costs a pass over
every gradient and, under fp16 loss scaling, an unscale), and every divergence measured here showed in the loss within
a few steps. Under DDP each process decides on its own loss; when one stops, torchrun ends the others.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch

from esreid.engine.hooks import HookBase
from esreid.errors import EsreidError


class TrainingDiverged(EsreidError):
    """The loss became non-finite or diverged; the message names the epoch, the iteration, the loss terms and the
    last good checkpoint (kept)."""


class DivergenceGuard(HookBase):
    """Stops the run on a non-finite or diverging loss (module docstring); ``cfg`` is the ``guard`` config section."""

    name = "guard"  # checkpoints keep its reference loss under this key

    def __init__(self, cfg: Any):
        self.factor, self.patience = cfg.divergence_factor, cfg.patience
        self.reference: Optional[float] = None
        self.streak = 0  # consecutive high steps

    def state_dict(self) -> Dict[str, Any]:
        return {} if self.reference is None else {"reference": self.reference}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.reference = state.get("reference")

    def threshold(self) -> float:
        return self.factor * self.reference if self.factor and self.reference is not None else math.inf

    def after_step(self) -> None:
        terms = self.trainer.state.terms
        loss = terms["loss"]
        if not all(math.isfinite(v) for v in terms.values()):
            raise self.error("non-finite loss")
        if self.reference is None:
            self.reference = loss
        self.streak = self.streak + 1 if loss > self.threshold() else 0
        if self.streak >= self.patience:
            raise self.error("training diverged", f"the loss stayed above {self.describe_threshold()} for "
                                                  f"{self.streak} steps")

    def after_epoch(self) -> None:
        if self.streak:
            raise self.error("training diverged", f"the epoch ended with the loss above {self.describe_threshold()}")
        bad = [name for name, p in self.trainer.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise self.error("training diverged", f"non-finite weights at the end of the epoch ({', '.join(bad[:3])}"
                                                  f"{' ...' if len(bad) > 3 else ''})")

    def describe_threshold(self) -> str:
        return f"{self.factor:g} x the untrained model's loss {self.reference:.4g}"

    def error(self, what: str, detail: str = "") -> TrainingDiverged:
        """:class:`TrainingDiverged`: ``what`` at the epoch and iteration (``detail``), the loss terms, the checkpoint
        kept and how to go on."""
        t = self.trainer
        solver = t.cfg.solver
        terms = ", ".join(f"{k}={v:.4g}" for k, v in t.state.terms.items())
        fixes = [f"lower solver.lr (now {solver.lr:g})", "set solver.amp=none" if solver.amp != "none" else "",
                 "set solver.grad_clip"]
        fix = ", ".join(f for f in fixes[:-1] if f) + " or " + fixes[-1]
        kept = t.last_checkpoint
        if kept is None:
            where, then = "no checkpoint was written yet", "then start again"
        else:
            where = f"the last good checkpoint {kept[0]} (epoch {kept[1]}) was kept"
            then = "then continue with: " + t.continue_command(["--allow-changes", "solver", "solver.lr=<lower>"])
        return TrainingDiverged(f"{what} at epoch {t.state.epoch + 1}, iteration {t.state.iter}"
                                f"{': ' + detail if detail else ''} ({terms}); {where}; {fix}, {then}")
