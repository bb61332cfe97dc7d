"""Training-step cost of ES-Net against the BoT baseline at the same batch, measured in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_step.py                       # ResNet-50, 384x128, batch 8
    .venv/bin/python benchmarks/train_step.py --backbone resnet_tiny --height 64 --width 32 --steps 10
    .venv/bin/python benchmarks/train_step.py --device cuda --ids 16 --instances 4 --amp bf16   # the paper's batch

A step = forward (returns the loss dict) + backward of the summed loss + Adam step, on random normalised images
with a PK label layout. Steps of the two models alternate in blocks (baseline first) so that drift of a shared machine
hits both; the script prints the median step times, the ratio ES-Net / baseline (goal <= 2.3x; the work floor is
about 2.24x: AIB and ESB passes each cost one baseline step, plus the ESB-stage forward of the saliency pass) and the
peak memory (CUDA ``max_memory_allocated`` per model; on CPU the process peak RSS after the baseline-only phase and
after the ES-Net phase).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
from common import hardware, peak_rss_mb

from esreid.config import SolverConfig
from esreid.engine.evaluator import autocast
from esreid.engine.schedule import build_optimizer
from esreid.models.baseline import Baseline, BaselineConfig
from esreid.models.esnet import ESNet, ESNetConfig


def make_step(model: torch.nn.Module, images: torch.Tensor, pids: torch.Tensor, device: torch.device,
              amp: str, compile_model: bool = False) -> Callable[[], float]:
    """A closure running one optimisation step and returning its wall time in seconds (synchronised on CUDA).
    With ``compile_model`` the forward runs through ``torch.compile`` (compiled during the warm-up steps)."""
    opt = build_optimizer(model, SolverConfig())
    model.train()
    forward = torch.compile(model) if compile_model else model

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = sum(forward(images, pids).values())
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    return step


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--ids", type=int, default=4, help="J identities per batch")
    p.add_argument("--instances", type=int, default=2, help="K images per identity")
    p.add_argument("--classes", type=int, default=751, help="training identities (classifier size; Market: 751)")
    p.add_argument("--shared-until", default="layer2", choices=["layer2", "layer3", "layer4"])
    p.add_argument("--steps", type=int, default=3, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model")
    p.add_argument("--block", type=int, default=1, help="consecutive steps of one model before switching")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true", help="models and images in channels_last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (warm-up steps compile)")
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    batch = args.ids * args.instances
    images = torch.randn(batch, 3, args.height, args.width, device=device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    images = images.contiguous(memory_format=memory_format)
    pids = torch.arange(args.ids, device=device).repeat_interleave(args.instances)
    common = dict(backbone=args.backbone, last_stride=1)
    models = {
        "baseline": Baseline(BaselineConfig(**common), args.classes),
        "esnet": ESNet(ESNetConfig(shared_until=args.shared_until, **common), args.classes),
    }
    print(f"hardware: {hardware(device)}")
    print(f"setting: {args.backbone}, {args.height}x{args.width}, batch {batch} ({args.ids}x{args.instances}), "
          f"amp {args.amp}, channels_last {args.channels_last}, compile {args.compile}, "
          f"ES-Net shared_until={args.shared_until}, R=0.2 P=0.5")

    steps: Dict[str, Callable[[], float]] = {}
    memory: Dict[str, float] = {}
    for name, model in models.items():  # warm-up, baseline first so its CPU peak RSS is its own
        model.to(device, memory_format=memory_format)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        steps[name] = make_step(model, images, pids, device, args.amp, args.compile)
        for _ in range(args.warmup):
            steps[name]()
        memory[name] = peak_memory_mb(device)

    times: Dict[str, List[float]] = {name: [] for name in models}
    while min(len(t) for t in times.values()) < args.steps:
        for name in models:
            times[name] += [steps[name]() for _ in range(args.block)]

    base, es = (statistics.median(times[n]) for n in ("baseline", "esnet"))
    for name, med in (("baseline", base), ("esnet", es)):
        label = "peak CUDA memory" if device.type == "cuda" else "process peak RSS"
        print(f"{name:9s} median step {med * 1e3:9.1f} ms  ({batch / med:7.1f} img/s)  {label} "
              f"{memory[name]:8.0f} MiB  (steps: {', '.join(f'{t * 1e3:.0f}' for t in times[name])} ms)")
    print(f"ratio ES-Net / baseline step time: {es / base:.2f}x (goal <= 2.3x; work floor ~2.24x)")


if __name__ == "__main__":
    main()
