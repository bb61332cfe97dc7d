"""Feature extraction throughput against the bare model forward on the same batches, measured in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inference.py                     # ES-Net, tiny ResNet, CPU
    .venv/bin/python benchmarks/inference.py --backbone resnet50 --height 384 --width 128 --batch 256 \\
        --device cuda --amp bf16 --channels-last --compile                          # a GPU

Extraction = :func:`esreid.engine.evaluator.extract_features`, exactly as ``esreid eval`` / ``extract`` run it: uint8
batch -> device -> normalisation -> (channels_last) -> autocast -> the retrieval rule (flip-sum per branch, L2,
concatenation) -> float32 on the CPU. Reference = ``model(images)`` in eval mode under ``no_grad`` with the same
autocast and memory format on the same batches, already normalised (and already mirrored: a flip rule costs two
forwards, so the reference runs the mirrored batch too). Batches are held in memory, so decoding is not measured
(``benchmarks/data_pipeline.py`` measures it). Passes over all batches alternate, extraction first; medians of
``--runs`` passes, after one warm-up pass each (compiled models compile there). Goal: extraction / reference <= 1.1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List

import torch
from common import hardware

from esreid.config import load_config
from esreid.data.transforms import TestTransform
from esreid.engine.compile import place_model
from esreid.engine.evaluator import autocast, extract_features
from esreid.models import build_model


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="esnet")
    p.add_argument("--backbone", default="resnet_tiny")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=64, help="images per batch (data.test_batch_size)")
    p.add_argument("--batches", type=int, default=4, help="batches per pass")
    p.add_argument("--runs", type=int, default=5, help="timed passes of each")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="solver.compile: the model's regions compiled")
    p.add_argument("--json", help="also write {extraction_images_per_s, reference_images_per_s, ratio} here")
    args = p.parse_args()

    cfg = load_config(None, [f"model.name={args.model}", f"model.backbone={args.backbone}",
                             f"data.height={args.height}", f"data.width={args.width}",
                             f"data.test_batch_size={args.batch}",
                             f"solver.amp={args.amp}", f"solver.channels_last={args.channels_last}",
                             f"solver.compile={args.compile}"])
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = place_model(build_model(cfg.model, 751, cfg.test), cfg.solver, device).eval()
    rule = model.retrieval
    gen = torch.Generator().manual_seed(0)
    loader = [{"images": torch.randint(0, 256, (args.batch, 3, args.height, args.width), dtype=torch.uint8,
                                       generator=gen),
               "pids": torch.zeros(args.batch, dtype=torch.long), "camids": torch.zeros(args.batch, dtype=torch.long)}
              for _ in range(args.batches)]
    transform = TestTransform(cfg.data)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    inputs = [transform(b["images"].to(device)).contiguous(memory_format=memory_format) for b in loader]
    if rule.flip:
        inputs += [torch.flip(x, dims=[3]).contiguous(memory_format=memory_format) for x in inputs]

    @torch.no_grad()
    def reference() -> None:
        for x in inputs:
            with autocast(device, args.amp):
                model(x)

    def extraction() -> None:
        extract_features(model, loader, device, transform, args.amp, args.channels_last)

    n = args.batch * args.batches
    print(f"hardware: {hardware(device)}")
    print(f"setting: {args.model} / {args.backbone}, {args.height}x{args.width}, {args.batches} batches of "
          f"{args.batch}, amp {args.amp}, channels_last {args.channels_last}, compile {args.compile}; retrieval "
          f"rule flip={rule.flip} normalize={rule.normalize} (reference: {len(inputs)} forwards per pass)")
    runs: Dict[str, List[float]] = {"extraction": [], "reference": []}
    extraction(), reference()  # warm-up (and compilation)
    for _ in range(args.runs):
        runs["extraction"].append(timed(extraction, device))
        runs["reference"].append(timed(reference, device))
    med = {k: statistics.median(v) for k, v in runs.items()}
    for k, v in runs.items():
        print(f"{k:10s}: median {med[k]:.3f} s per pass = {n / med[k]:9.1f} images/s  "
              f"(passes: {', '.join(f'{t:.3f}' for t in v)} s)")
    print(f"ratio extraction / bare forward: {med['extraction'] / med['reference']:.3f}x (goal <= 1.1x)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"extraction_images_per_s": n / med["extraction"], "reference_images_per_s": n / med["reference"],
                       "ratio": med["extraction"] / med["reference"]}, f, indent=2)


if __name__ == "__main__":
    main()
