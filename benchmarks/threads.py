"""Intra-op threads for a tiny training run: ``threads: auto`` against 1 and all cores, on the machine as it is and
with one extra busy-loop process, measured in the same run.

    .venv/bin/python benchmarks/threads.py                    # 3 runs of each setting in each condition
    .venv/bin/python benchmarks/threads.py --workers 2 --runs 5

Each run is a fresh process (no ``OMP_NUM_THREADS``) that builds the :class:`~esreid.engine.trainer.Trainer` for a
tiny ES-Net on synthetic people (tiny ResNet, 64x32, 16x4 batches, ``--epochs`` epochs, the evaluation at the end) with
``threads=<setting>`` and times construction + ``train()``. The settings alternate within each condition; the table
shows the median seconds, what ``auto`` resolved to in each run, and the 1-minute load average at the start of the
runs (this machine's other processes included). Condition "busy loop": one extra process spinning on the CPU for the
whole condition.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

from common import hardware

DATA = {"num_train_ids": 64, "num_test_ids": 50, "images_per_id": 8}


def overrides(root: str, out: str, threads: str, epochs: int, workers: int) -> List[str]:
    return ["data.name=synthetic", f"data.root={root}", f"data.args={json.dumps(DATA)}", "data.height=64",
            "data.width=32", "data.ids_per_batch=16", "data.instances=4", f"data.workers={workers}",
            "data.test_batch_size=256", "model.name=esnet", "model.backbone=resnet_tiny", f"solver.epochs={epochs}",
            "solver.warmup_epochs=1", "solver.milestones=[]", "test.eval_period=0", "device=cpu",
            "checkpoint.period=0", "checkpoint.best=''", f"output_dir={out}", f"threads={threads}"]


def child(args: argparse.Namespace) -> None:
    """One timed run; prints ``{"seconds": ..., "threads": ...}``."""
    import torch

    from esreid.config import load_config
    from esreid.engine.trainer import Trainer

    cfg = load_config(None, overrides(args.root, args.out, args.child, args.epochs, args.workers))
    t0 = time.perf_counter()
    trainer = Trainer(cfg, progress=False, log=lambda line: None)
    threads = torch.get_num_threads()
    trainer.train()
    print(json.dumps({"seconds": time.perf_counter() - t0, "threads": threads}))


def spin(stop) -> None:
    while not stop.is_set():
        pass


def run(args: argparse.Namespace, setting: str, folder: str) -> Dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = tempfile.mkdtemp(dir=folder)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", setting, "--root", os.path.join(folder, "data"),
           "--out", out, "--epochs", str(args.epochs), "--workers", str(args.workers)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs of each setting per condition")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="data.workers of the runs")
    p.add_argument("--settings", default="auto,1,all", help="thread settings to compare (all = every core)")
    p.add_argument("--conditions", default="as is,busy loop", help="'as is', 'busy loop' or both (comma-separated)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    cores = os.cpu_count() or 1
    settings = [str(cores) if s == "all" else s for s in args.settings.split(",")]
    print(f"hardware: {hardware()}")
    print(f"tiny ES-Net training run: {args.epochs} epochs of {DATA['num_train_ids']} ids x {DATA['images_per_id']} "
          f"images at 64x32 + evaluation, data.workers={args.workers}; {args.runs} runs per cell, alternating")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        from esreid.data.datasets.synthetic import generate_synthetic_market  # once, outside the timed runs

        generate_synthetic_market(os.path.join(folder, "data"), **DATA)
        for condition in args.conditions.split(","):
            stop = mp.Event()
            spinner = mp.Process(target=spin, args=(stop,), daemon=True) if condition == "busy loop" else None
            if spinner:
                spinner.start()
            load = os.getloadavg()[0]
            results: Dict[str, List[Dict[str, float]]] = {s: [] for s in settings}
            for _ in range(args.runs):
                for s in settings:
                    results[s].append(run(args, s, folder))
            if spinner:
                stop.set()
                spinner.join()
            for s in settings:
                secs = [r["seconds"] for r in results[s]]
                used = sorted({int(r["threads"]) for r in results[s]})
                rows.append((condition, f"{load:.1f}", s, "/".join(map(str, used)), statistics.median(secs), secs))
    print("\n| condition | load average at start | threads setting | threads used | median s | runs (s) |")
    print("|---|---|---|---|---|---|")
    for condition, load, s, used, med, secs in rows:
        print(f"| {condition} | {load} | {s} | {used} | {med:.1f} | {', '.join(f'{t:.1f}' for t in secs)} |")


if __name__ == "__main__":
    main()
