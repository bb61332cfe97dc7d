"""Training-data throughput: JPEG folders vs the decoded-image cache, against what a model train step consumes.

Generates a synthetic Market-layout JPEG dataset (``esreid.data.datasets.synthetic``; 128x64 sources, like Market),
then times the PK training loader at ``--height x --width`` reading the JPEGs (decode + resize per image) and reading
the cache (built once, build time printed separately), and a model train step (backbone + linear classifier + CE
+ SGD) on batches of the same size. Prints images/s and the ratios loader / model step (> 1: the loader keeps up).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_pipeline.py [--workers 2] [--backbone resnet50] [--batches 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from common import hardware

from esreid.config import DataConfig
from esreid.data.cache import build_cache_source
from esreid.data.datasets.synthetic import SyntheticMarket, generate_synthetic_market
from esreid.data.loader import build_train_loader
from esreid.models.backbones import build_backbone


def loader_rate(cfg: DataConfig, items, batches: int) -> float:
    loader = build_train_loader(cfg, items, seed=0)
    it = iter(loader)
    next(it)  # worker start-up excluded
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += batch["images"].shape[0]
    return n / (time.perf_counter() - t0)


def model_rate(backbone: str, batch: int, height: int, width: int, steps: int) -> float:
    net = build_backbone(backbone)
    head = torch.nn.LazyLinear(100)
    x = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8)
    y = torch.randint(0, 100, (batch,))
    head(net(x[:1].float()).mean((2, 3)))  # materialise the lazy layer
    opt = torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=0.01)

    def step():
        loss = F.cross_entropy(head(net(x.float().div(255)).mean((2, 3))), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--ids-per-batch", type=int, default=16)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--model-steps", type=int, default=3)
    args = ap.parse_args()

    print(f"hardware: {hardware()}, CUDA {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_synthetic_market(os.path.join(tmp, "synthetic"), num_train_ids=64, num_test_ids=4, images_per_id=8)
        items = SyntheticMarket(tmp, verbose=False).train
        print(f"generated {len(items)} train JPEGs (128x64) in {time.perf_counter() - t0:.1f} s")
        cfg = DataConfig(root=tmp, height=args.height, width=args.width, workers=args.workers,
                         ids_per_batch=args.ids_per_batch, instances=args.instances)
        jpeg = loader_rate(cfg, items, args.batches)
        t0 = time.perf_counter()
        build_cache_source(items, args.height, args.width, os.path.join(tmp, "cache"))
        build_s = time.perf_counter() - t0
        cfg.cache, cfg.cache_dir = True, os.path.join(tmp, "cache")
        cached = loader_rate(cfg, items, args.batches)
    batch = args.ids_per_batch * args.instances
    model = model_rate(args.backbone, batch, args.height, args.width, args.model_steps)
    print(f"loader, JPEG folders : {jpeg:9.1f} images/s  ({args.workers} workers, {args.height}x{args.width})")
    build = f"cache build {build_s:.1f} s, {len(items) / build_s:.0f} images/s"
    print(f"loader, cache        : {cached:9.1f} images/s  ({build})")
    print(f"model train step     : {model:9.1f} images/s  ({args.backbone}, batch {batch})")
    print(f"ratio cache / JPEG   : {cached / jpeg:9.2f}")
    print(f"ratio JPEG  / model  : {jpeg / model:9.2f}  (> 1: the JPEG loader keeps up with training)")
    print(f"ratio cache / model  : {cached / model:9.2f}")


if __name__ == "__main__":
    main()
