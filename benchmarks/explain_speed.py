"""Cost of the CG-RAM maps of ``esreid explain``: (query, match) pairs batched against one pair at a time, and the
frozen parameters of test-time CG-RAM against a pass that records the parameters' graph, measured in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/explain_speed.py                    # ES-Net, tiny ResNet, 256x128
    .venv/bin/python benchmarks/explain_speed.py --backbone resnet50 --pairs 8 --runs 2
    .venv/bin/python benchmarks/explain_speed.py --device cuda --backbone resnet50 --pairs 160 --batch 32

One run explains ``--pairs`` random (query, gallery) pairs at the model's saliency layer with its retrieval rule
(ES-Net: flip, so 4 images per pair): ``batched`` = :meth:`esreid.engine.explain.Explainer.maps` with ``--batch`` pairs
per pass (what explain does); ``per pair`` = one pass per pair; ``unfrozen`` = batched, with the parameters left
requiring grad (the forward then keeps the graph before the layer). The three alternate, run after run, so drift of
a shared machine hits all; the script prints median seconds, pairs/s and the ratios per pair / batched and
unfrozen / batched, and checks that the three give the same maps. Memory first: the peak (CUDA
``max_memory_allocated``; on the CPU the process peak RSS, which only grows) after one batched run, then after one
unfrozen run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Callable, Dict

import torch
from common import hardware, peak_rss_mb

from esreid.config import load_config
from esreid.engine.explain import Explainer
from esreid.erasing import cgram
from esreid.models import build_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="esnet")
    p.add_argument("--backbone", default="resnet_tiny")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = load_config(None, [f"model.name={args.model}", f"model.backbone={args.backbone}", "model.pretrained=''",
                             f"data.height={args.height}", f"data.width={args.width}", f"device={args.device}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 100, cfg.test).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (args.pairs, 3, args.height, args.width), dtype=torch.uint8, generator=gen)
    g = torch.randint(0, 256, (args.pairs, 3, args.height, args.width), dtype=torch.uint8, generator=gen)
    batched = Explainer(args.model, model, cfg, device, batch_size=args.batch)
    single = Explainer(args.model, model, cfg, device, batch_size=1)

    def unfrozen():
        with _patched(cgram, "frozen_parameters", contextlib.nullcontext):
            return batched.maps(q, g)

    methods: Dict[str, Callable] = {"batched": lambda: batched.maps(q, g), "per pair": lambda: single.maps(q, g),
                                    "unfrozen": unfrozen}
    memory = {name: _peak_mb(methods[name], device) for name in ("batched", "unfrozen")}  # batched first: RSS grows
    ref = batched.maps(q[:2], g[:2])  # warm-up, and the reference maps
    for name, fn in methods.items():
        got = fn()
        torch.testing.assert_close(got[0][:2], ref[0], rtol=1e-4, atol=1e-5, msg=f"{name}: other maps")
    times: Dict[str, list] = {name: [] for name in methods}
    for _ in range(args.runs):
        for name, fn in methods.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    print(f"hardware: {hardware(device)}")
    print(f"{args.model} / {args.backbone} at {args.height}x{args.width}, {args.pairs} pairs, flip="
          f"{model.retrieval.flip}, CG-RAM at {batched.layer}, batch {args.batch} pairs, {args.runs} runs (medians)")
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, s in med.items():
        print(f"  {name:<9} {s:8.3f} s  {args.pairs / s:8.1f} pairs/s")
    print(f"ratio per pair / batched: {med['per pair'] / med['batched']:.2f}x")
    print(f"ratio unfrozen / batched: {med['unfrozen'] / med['batched']:.2f}x")
    what = "max allocated" if device.type == "cuda" else "process peak RSS"
    print(f"memory ({what}): batched {memory['batched']:.0f} MiB, then unfrozen {memory['unfrozen']:.0f} MiB")


def _peak_mb(fn: Callable, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        return torch.cuda.max_memory_allocated(device) / 2**20
    fn()
    return peak_rss_mb()


@contextlib.contextmanager
def _patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


if __name__ == "__main__":
    main()
