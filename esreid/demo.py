"""`esreid demo`: synthetic people -> BoT baseline and ES-Net on a tiny ResNet -> metrics table.

Everything runs on the CPU in minutes: a tiny 4-stage ResNet (16/32/64/128 channels) on 64x32 images, trained from
scratch (no ImageNet weights can be assumed offline). The recipe is the paper's shape (Adam, warm-up, step decay,
PK batches, flip test) scaled down in epochs; ES-Net keeps its paper erasing settings (R=20%, P=0.5).
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List

import numpy as np
import torch

from esreid.config import load_config
from esreid.engine.trainer import Trainer
from esreid.evaluation.metric_keys import reported
from esreid.files import atomic_write

# (train ids, test ids, images per id, epochs, milestones) for the full and the --quick demo
SIZES = {
    False: dict(train_ids=200, test_ids=150, images=10, epochs=30, warmup=3, milestones=[20, 26]),
    True: dict(train_ids=64, test_ids=50, images=8, epochs=8, warmup=1, milestones=[6]),
}

METHODS = {
    "BoT baseline": ["model.name=baseline"],
    "ES-Net": ["model.name=esnet", "model.erase_ratio=0.2", "model.erase_prob=0.5"],
}


def demo_overrides(data_root: str, quick: bool) -> List[str]:
    s = SIZES[quick]
    args = {"num_train_ids": s["train_ids"], "num_test_ids": s["test_ids"], "images_per_id": s["images"]}
    return [
        "data.name=synthetic",
        f"data.root={data_root}",
        f"data.args={json.dumps(args)}",
        "data.height=64",
        "data.width=32",
        "data.ids_per_batch=16",
        "data.instances=4",
        "data.workers=0",
        "data.test_batch_size=256",
        "model.backbone=resnet_tiny",
        "model.pretrained=''",
        f"solver.epochs={s['epochs']}",
        f"solver.warmup_epochs={s['warmup']}",
        f"solver.milestones={s['milestones']}",
        "solver.lr=3.5e-3",  # from scratch, small net: 10x the fine-tuning lr of the paper
        "test.eval_period=0",
        "device=cpu",
        "checkpoint.period=0",
    ]


def chance_level(trainer: Trainer) -> Dict[str, float]:
    """Metrics of random features under the same protocol and split: the floor the models must beat."""
    from esreid.evaluation.protocols import PROTOCOLS

    ds = trainer.dataset
    g = torch.Generator().manual_seed(0)
    qf = torch.randn(len(ds.query), 64, generator=g)
    gf = torch.randn(len(ds.gallery), 64, generator=g)
    meta = lambda items: (np.array([i.pid for i in items]), np.array([i.camid for i in items]))  # noqa: E731
    (qp, qc), (gp, gc) = meta(ds.query), meta(ds.gallery)
    return {"protocol": ds.protocol, **PROTOCOLS.get(ds.protocol)(qf, qp, qc, gf, gp, gc, metric="cosine",
                                                                  ap_mode="anchor", rerank=False, ranks=(1, 5, 10, 20))}


def run_demo(quick: bool = False, output_dir: str = "outputs/demo", progress: bool = True,
             threads: str = "auto") -> Dict[str, Dict]:
    """Train and evaluate both methods; prints and returns ``{method: metrics}`` (plus the chance row).
    ``threads``: ``auto`` or a number, the ``threads`` config key (esreid.engine.threads)."""
    data_root = os.path.join(output_dir, "synthetic-quick" if quick else "synthetic")
    run_dir = os.path.join(output_dir, time.strftime("%Y%m%d-%H%M%S") + ("-quick" if quick else ""))
    results: Dict[str, Dict] = {}
    trainers: Dict[str, Trainer] = {}
    for method, extra in METHODS.items():
        folder = os.path.join(run_dir, extra[0].split("=")[1])
        cfg = load_config(None, demo_overrides(data_root, quick) + extra + [f"output_dir={folder}",
                                                                             f"threads={threads}"])
        print(f"\n=== {method}: {cfg.model.name} / {cfg.model.backbone} / {cfg.data.height}x{cfg.data.width}, "
              f"{cfg.solver.epochs} epochs -> {folder}")
        start = time.perf_counter()
        trainer = trainers[method] = Trainer(cfg, progress=progress)
        metrics = trainer.train()
        metrics["train_seconds"] = time.perf_counter() - start
        results[method] = metrics
        if "chance (random features)" not in results:
            results["chance (random features)"] = chance_level(trainer)
    chance = results.pop("chance (random features)")
    results["chance (random features)"] = chance
    print("\n" + format_table(results))
    atomic_write(os.path.join(run_dir, "demo_results.json"), json.dumps(results, indent=2))
    print(f"\nresults: {os.path.join(run_dir, 'demo_results.json')}")
    print(f"comparison of the two models (metrics, CMC, explanations; links to each report): "
          f"{comparison_page(run_dir, trainers, results)}")
    return results


def comparison_page(run_dir: str, trainers: Dict[str, Trainer], results: Dict[str, Dict], queries: int = 2) -> str:
    """``<run_dir>/comparison.html``: the metrics of the trained models and the chance row, their CMC curves, links
    to each model's report.html, and ``queries`` test queries whose rank-1 differs between the two models explained
    side by side (top-5, CG-RAM at each model's saliency layer). Returns its path."""
    from esreid.engine.evaluator import extract_test_features
    from esreid.engine.explain import Explainer, ExplainError, dataset_queries, explanation_grids, select_queries
    from esreid.engine.reporting import cmc_curve
    from esreid.viz.report import RunSummary, write_comparison

    runs, explainers, feats = [], [], []
    for method, t in trainers.items():
        f = extract_test_features(t.model, t.dataset, t.cfg, t.device)
        cmc = cmc_curve(results[method], f, t.dataset, t.cfg, t.model.retrieval.metric)
        report = os.path.relpath(os.path.join(t.out, "report.html"), run_dir)
        runs.append(RunSummary(method, {**results[method], "cmc": cmc}, report))
        explainers.append(Explainer(method, t.model, t.cfg, t.device))
        feats.append(f)
    runs += [RunSummary(name, m) for name, m in results.items() if name not in trainers]
    dataset = next(iter(trainers.values())).dataset
    candidates = dataset_queries(dataset)
    qfs, gfs = [f.query[0] for f in feats], [f.gallery[0] for f in feats]
    try:
        picked = select_queries(explainers, candidates, qfs, gfs, dataset.gallery, "differ", queries, seed=0)
    except ExplainError:  # the two models agree on every rank-1: nothing to contrast
        picked = []
    grids = explanation_grids(explainers, dataset, [qf[picked] for qf in qfs], gfs, [candidates[i] for i in picked])
    plots = {f"{name}: rank-1 differs between the models": png for name, png in grids.items()}
    return write_comparison(os.path.join(run_dir, "comparison.html"), "esreid demo: " + " vs ".join(trainers), runs,
                            plots=plots)


def format_table(results: Dict[str, Dict]) -> str:
    cols = list({c.key: c for m in results.values() for c in reported(m)}.values())  # as the protocols declare
    head = f"{'method':<26}" + "".join(f"{c.label:>8}" for c in cols) + f"{'time':>9}"
    lines = [head, "-" * len(head)]
    for name, m in results.items():
        cells = "".join(f"{c.show(m[c.key]):>8}" if c.key in m else f"{'-':>8}" for c in cols)
        t = f"{m['train_seconds']:8.0f}s" if "train_seconds" in m else f"{'':>9}"
        lines.append(f"{name:<26}{cells}{t}")
    return "\n".join(lines)
