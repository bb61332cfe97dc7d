"""FeatureExtractor throughput against the evaluator's extraction of a dataset split (what ``esreid extract --split``
runs), on the same JPEG files, alternating the two, medians of ``--runs``.

Generates a custom-layout dataset whose query split holds ``--images`` JPEGs (128x64 sources, like Market), builds a
BoT baseline on ``--backbone`` (random weights: the speed does not depend on them), then times per run:

* reference: ``esreid.export.extract_split(model, dataset, cfg, "query", device)`` (the test loader with ``--workers``);
* ``FeatureExtractor(paths)``: the same files through the extractor (same loader settings);
* ``FeatureExtractor(arrays)``: the same images already decoded in memory (uint8 HxWx3 arrays; decoded in-process).

Prints images/s of each, the ratios against the reference, and the largest feature difference (0: the same numbers).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/feature_extractor.py [--backbone resnet50] [--images 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from common import hardware
from PIL import Image

from esreid.config import dump_yaml, load_config
from esreid.data.base import build_dataset
from esreid.export import extract_split
from esreid.inference import FeatureExtractor
from esreid.models import build_model


def write_dataset(root: str, query_images: int) -> None:
    """Custom layout: 4 train ids, 2 gallery images, ``query_images`` query JPEGs of 8 per identity."""
    rng = np.random.default_rng(0)

    def save(split: str, pid: int, n: int) -> None:
        folder = os.path.join(root, split, f"{pid:04d}", "cam1" if split == "query" else "cam2")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)).save(os.path.join(folder, f"{n}.jpg"),
                                                                                  quality=90)

    for i in range(8):
        save("train", i // 2, i)
    for i in range(2):
        save("gallery", i, i)
    for i in range(query_images):
        save("query", i // 8, i)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet_tiny")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"hardware: {hardware()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "data")
        write_dataset(root, args.images)
        cfg = load_config(None, ["data.name=custom", f"data.root={root}", f"data.height={args.height}",
                                 f"data.width={args.width}", f"data.workers={args.workers}",
                                 f"data.test_batch_size={args.batch}", "data.ids_per_batch=2", "data.instances=2",
                                 f"model.backbone={args.backbone}", "model.pretrained=", "device=cpu"])
        dataset = build_dataset(cfg.data.name, cfg.data.root, verbose=False)
        torch.manual_seed(0)
        model = build_model(cfg.model, dataset.num_train_pids, cfg.test).eval()
        weights, config = os.path.join(tmp, "w.pth"), os.path.join(tmp, "c.yaml")
        torch.save(model.state_dict(), weights)
        with open(config, "w") as f:
            f.write(dump_yaml(cfg))
        extractor = FeatureExtractor(config, weights)
        paths = [item.path for item in dataset.query]
        arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        cpu = torch.device("cpu")
        cases = {"reference (extract_split)": lambda: torch.from_numpy(extract_split(model, dataset, cfg, "query",
                                                                                     cpu)[0]),
                 "FeatureExtractor(paths)": lambda: extractor(paths),
                 "FeatureExtractor(arrays)": lambda: extractor(arrays)}
        times = {name: [] for name in cases}
        feats = {}
        for _ in range(args.runs):
            for name, fn in cases.items():  # alternating: drift in machine load hits every case alike
                seconds, feats[name] = timed(fn)
                times[name].append(seconds)
    ref_name = next(iter(cases))
    ref = statistics.median(times[ref_name])
    print(f"{len(paths)} JPEGs (128x64) -> {args.height}x{args.width}, {args.backbone}, batch {args.batch}, "
          f"{args.workers} workers, flip {cfg.test.flip is not False}, median of {args.runs} runs")
    for name in cases:
        t = statistics.median(times[name])
        diff = float((feats[name] - feats[ref_name]).abs().max())
        print(f"  {name:<27} {len(paths) / t:8.1f} img/s  ratio reference/this {ref / t:5.2f}  "
              f"max |feature - reference| {diff:.1e}")


if __name__ == "__main__":
    main()
