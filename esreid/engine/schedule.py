"""Learning-rate schedule: linear warm-up per iteration, then multi-step decay per epoch (ES-Net §IV-A, docs/methods.md
§1.6)."""

from __future__ import annotations

from bisect import bisect_right
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from esreid.registry import Registry


def lr_factor(iteration: int, iters_per_epoch: int, warmup_epochs: int, warmup_factor: float,
              milestones: Sequence[int], gamma: float) -> float:
    """Multiplier of the base lr at a 0-based global ``iteration``.

    Warm-up: linear from ``warmup_factor`` to 1 over ``warmup_epochs`` epochs, evaluated at the end of each iteration
    (so the very first step already moves: ES-Net says "from 0"; BoT starts at 0.01). Afterwards the factor is
    ``gamma ** (number of milestones <= epoch)`` with 0-based epochs: with milestones [40, 70], epochs 0..39 use 1,
    40..69 use 0.1, 70.. use 0.01 (ES-Net: 3.5e-4 until epoch 40, 3.5e-5 from 40, 3.5e-6 from 70).
    """
    epoch = iteration // iters_per_epoch
    decay = gamma ** bisect_right(sorted(milestones), epoch)
    warmup_iters = warmup_epochs * iters_per_epoch
    if iteration < warmup_iters:
        alpha = (iteration + 1) / warmup_iters
        return decay * (warmup_factor + (1.0 - warmup_factor) * alpha)
    return decay


def build_scheduler(optimizer: torch.optim.Optimizer, solver_cfg, iters_per_epoch: int):
    """A per-iteration ``LambdaLR`` implementing :func:`lr_factor` (call ``step()`` after every optimiser step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda it: lr_factor(it, iters_per_epoch, solver_cfg.warmup_epochs, solver_cfg.warmup_factor,
                             solver_cfg.milestones, solver_cfg.gamma),
    )


def build_optimizer(model: torch.nn.Module, solver_cfg) -> torch.optim.Optimizer:
    """Adam/AdamW/SGD over the model's parameters except its ``sgd_params()`` (see :func:`build_sgd`). Parameters
    named by ``model.no_weight_decay()`` (the P-pooling exponent) get no decay; those in ``model.lr_multipliers()``
    train at their multiple of ``solver.lr`` (a group of their own, scheduled like the rest).

    Groups: decayed parameters at ``solver.lr`` first, then the undecayed ones, then one group per (decay, multiplier)
    pair, so that the runs without multipliers keep the two groups of earlier versions (checkpoints resume)."""
    skip, mult, own = model.no_weight_decay(), model.lr_multipliers(), model.sgd_params()
    grouped: Dict[Tuple[bool, float], List[torch.nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    for name, p in model.named_parameters():
        if p.requires_grad and name not in own:
            grouped.setdefault((name not in skip, float(mult.get(name, 1.0))), []).append(p)
    groups = []
    for (decay, m), params in grouped.items():
        if params or (decay and m == 1.0):
            group = {"params": params, "weight_decay": solver_cfg.weight_decay if decay else 0.0}
            if m != 1.0:
                group["lr"] = solver_cfg.lr * m
            groups.append(group)
    opt = OPTIMIZERS.get(solver_cfg.optimizer)
    return opt(groups, solver_cfg)


def build_sgd(model: torch.nn.Module) -> Optional[torch.optim.SGD]:
    """Plain SGD (no momentum, no weight decay, no schedule: stateless, so nothing to checkpoint) over the model's
    ``sgd_params()`` at their own learning rates (AGW's centres, docs/methods.md §8.4); None when there are none."""
    own = model.sgd_params()
    if not own:
        return None
    params = dict(model.named_parameters())
    return torch.optim.SGD([{"params": [params[n]], "lr": lr} for n, lr in own.items()], lr=min(own.values()),
                           momentum=0.0, weight_decay=0.0)


OPTIMIZERS = Registry("optimizer")  # solver.optimizer -> (param groups, solver config) -> optimiser
OPTIMIZERS.register("adam")(lambda groups, c: torch.optim.Adam(groups, lr=c.lr))
OPTIMIZERS.register("adamw")(lambda groups, c: torch.optim.AdamW(groups, lr=c.lr))
# Nesterov momentum; momentum 0 is plain SGD (torch refuses nesterov=True without momentum)
OPTIMIZERS.register("sgd")(lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum,
                                                              nesterov=c.momentum > 0))
