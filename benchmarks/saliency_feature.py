"""ES-Net's training-time CG-RAM with f = the ESB feature (esreid's default) or the retrieval vector (AIB ‖ ESB, flip;
ES-Net eq. 2's definition): ``model.saliency_feature: esb | retrieval`` (docs/methods.md §1.3, §7 #3).

    .venv/bin/python benchmarks/saliency_feature.py                 # the quick demo's data, 8 epochs, seeds 0 1
    .venv/bin/python benchmarks/saliency_feature.py --full          # esreid demo's data and schedule

For each setting and seed: a demo-scale ES-Net (synthetic people, resnet_tiny, 64x32, 16x4, R 20% / P 0.5, from
scratch at lr 3.5e-3) is trained and evaluated; the table gives mAP / R1, the training seconds (the retrieval reading
adds forward passes) and, on the trained model, how far the two readings' erased regions agree: the mean IoU of the
round(R·H·W)-pixel masks BESM would erase under each reading, over the first training batches.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import hardware  # noqa: E402


def mask_agreement(trainer, batches: int = 4):
    """Mean IoU between the erasing masks of the two readings on ``batches`` training batches of ``trainer``'s model."""
    import dataclasses

    import torch

    from esreid.erasing.besm import salient_mask

    model, cfg = trainer.model, trainer.cfg.model
    model.train()
    readings = {}
    ious = []
    for i, batch in enumerate(trainer.train_loader):
        if i == batches:
            break
        with torch.no_grad():
            images, pids = trainer.augment(batch["images"]), batch["pids"]  # as the trainer feeds them
        for name in ("esb", "retrieval"):
            model.cfg = dataclasses.replace(cfg, saliency_feature=name)
            readings[name] = salient_mask(model.saliency(images, pids), images.shape[-2:], cfg.erase_ratio)
        model.cfg = cfg
        a, b = readings["esb"], readings["retrieval"]
        ious.append(((a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp(min=1)).mean().item())
    return statistics.mean(ious)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--full", action="store_true", help="esreid demo's data and schedule (default: --quick's)")
    ap.add_argument("--epochs", type=int, default=8, help="without --full")
    args = ap.parse_args()

    from esreid.config import load_config
    from esreid.demo import demo_overrides
    from esreid.engine.trainer import Trainer

    print(f"hardware: {hardware()}; load {os.getloadavg()[0]:.2f}")
    print("| saliency_feature | seed | mAP | R1 | train s | IoU of the two readings' masks |")
    print("|---|---|---|---|---|---|")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for feature, seed in itertools.product(("esb", "retrieval"), args.seeds):
            over = demo_overrides(os.path.join(tmp, "data"), quick=not args.full) + [
                "model.name=esnet", "model.erase_ratio=0.2", "model.erase_prob=0.5",
                f"model.saliency_feature={feature}", f"seed={seed}", "threads=1", "checkpoint.best=''",
                "report=false", f"output_dir={os.path.join(tmp, f'{feature}-{seed}')}"]
            if not args.full:
                over += [f"solver.epochs={args.epochs}", "solver.warmup_epochs=1",
                         f"solver.milestones=[{max(args.epochs - 2, 1)}]"]
            trainer = Trainer(load_config(None, over), progress=False, log=lambda line: None)
            start = time.perf_counter()
            metrics = trainer.train()
            secs = time.perf_counter() - start
            iou = mask_agreement(trainer)
            rows.setdefault(feature, []).append((metrics["mAP"], metrics["R1"], secs, iou))
            print(f"| {feature} | {seed} | {100 * metrics['mAP']:.1f} | {100 * metrics['R1']:.1f} | {secs:.0f} | "
                  f"{iou:.3f} |", flush=True)
    for feature, vals in rows.items():
        m = [statistics.mean(v[i] for v in vals) for i in range(4)]
        print(f"| {feature} | mean | {100 * m[0]:.1f} | {100 * m[1]:.1f} | {m[2]:.0f} | {m[3]:.3f} |")


if __name__ == "__main__":
    main()
