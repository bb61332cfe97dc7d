"""How far P-pooling's exponent l moves from its initial value, at the network lr and at multiples of it
(``model.ppool_lr_mult``; docs/methods.md §1.5).

    .venv/bin/python benchmarks/ppool_exponent.py                      # demo-scale ES-Net, multipliers 1, 10, 100
    .venv/bin/python benchmarks/ppool_exponent.py --mults 1 100 --epochs 4

Two parts:

1. Arithmetic (no training): Adam moves a scalar by at most about lr per step (its update is lr·m/sqrt(v), |m/sqrt(v)|
   <= ~1), so over a recipe ``raw`` (l = 1 + softplus(raw)) moves by at most the summed lr, S = Σ_it lr(it). Printed
   for the paper's Market-1501 recipe (12,936 images / 64 per batch, 120 epochs, warm-up 10, x0.1 at 40 / 70,
   3.5e-4) with the range of l it allows from init 3, for each multiplier.
2. Measurement: the tiny ES-Net of ``esreid demo`` (synthetic people, resnet_tiny, 64x32, 16x4 batches, from
   scratch at lr 3.5e-3; ``--quick``: the quick demo's data, ``--epochs`` epochs) trained once per multiplier and
   seed; l after every epoch (``esb_l``) and the final mAP / R1.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import hardware  # noqa: E402

from esreid.engine.schedule import lr_factor  # noqa: E402
from esreid.models.pooling import _inverse_softplus  # noqa: E402


def softplus(x: float) -> float:
    import math

    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def summed_lr(iters_per_epoch: int, epochs: int, warmup: int, milestones, lr: float, warmup_factor: float = 0.0):
    return lr * sum(lr_factor(it, iters_per_epoch, warmup, warmup_factor, milestones, 0.1)
                    for it in range(iters_per_epoch * epochs))


def arithmetic(mults) -> None:
    ipe = 12936 // 64  # Market-1501 training images / (16 x 4): about the PK sampler's batches per epoch
    s = summed_lr(ipe, 120, 10, [40, 70], 3.5e-4)
    raw0 = _inverse_softplus(3.0 - 1.0)
    print(f"Market-1501 recipe: {ipe} iterations/epoch x 120 epochs, summed lr S = {s:.3f}")
    print("| ppool_lr_mult | summed lr of raw | l reachable from 3 (Adam, |step| <= lr) |")
    print("|---|---|---|")
    for m in mults:
        lo, hi = 1 + softplus(raw0 - m * s), 1 + softplus(raw0 + m * s)
        print(f"| {m:g} | {m * s:.3g} | [{lo:.3g}, {hi:.3g}] |")


def measure(mults, seeds, quick: bool, epochs: int, root: str, out: str) -> None:
    from esreid.config import load_config
    from esreid.demo import demo_overrides
    from esreid.engine.trainer import Trainer

    what = f"esreid demo --quick data, {epochs} epochs, warm-up 1" if quick else "esreid demo's data and schedule"
    print(f"\nmeasured: demo-scale ES-Net ({what}; lr 3.5e-3)")
    print("| ppool_lr_mult | seed | l after each epoch | mAP | R1 | seconds |")
    print("|---|---|---|---|---|---|")
    for m, seed in itertools.product(mults, seeds):
        over = demo_overrides(root, quick=quick) + [
            "model.name=esnet", f"model.ppool_lr_mult={m}", f"seed={seed}",
            f"output_dir={os.path.join(out, f'mult{m:g}-seed{seed}')}", "threads=1", "checkpoint.best=''",
            "report=false"]
        if quick:
            over += [f"solver.epochs={epochs}", "solver.warmup_epochs=1", f"solver.milestones=[{max(epochs - 2, 1)}]"]
        trainer = Trainer(load_config(None, over), progress=False, log=lambda line: None)
        trail = []
        start = time.perf_counter()
        for epoch in range(trainer.cfg.solver.epochs):  # Trainer.train, one epoch at a time, reading l after each
            trainer._train_epoch(epoch)
            trail.append(trainer.model.stats()["esb_l"])
        metrics, _ = trainer.evaluate()
        secs = time.perf_counter() - start
        shown = trail if len(trail) <= 10 else trail[:: len(trail) // 10] + trail[-1:]
        print(f"| {m:g} | {seed} | {', '.join(f'{v:.3f}' for v in shown)} | {100 * metrics['mAP']:.1f} | "
              f"{100 * metrics['R1']:.1f} | {secs:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mults", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--quick", action="store_true", help="the quick demo's data, --epochs epochs")
    ap.add_argument("--epochs", type=int, default=8, help="with --quick")
    ap.add_argument("--no-train", action="store_true", help="the arithmetic only")
    args = ap.parse_args()
    print(f"hardware: {hardware()}; load {os.getloadavg()[0]:.2f}")
    arithmetic(args.mults)
    if not args.no_train:
        with tempfile.TemporaryDirectory() as tmp:
            measure(args.mults, args.seeds, args.quick, args.epochs, os.path.join(tmp, "data"),
                    os.path.join(tmp, "runs"))


if __name__ == "__main__":
    main()
