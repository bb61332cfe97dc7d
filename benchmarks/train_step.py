"""Training-step cost of the methods at the same batch, eager and compiled, measured in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_step.py                       # ResNet-50, 384x128, batch 8
    .venv/bin/python benchmarks/train_step.py --backbone resnet_tiny --compile          # compiled vs eager, CPU
    .venv/bin/python benchmarks/train_step.py --device cuda --ids 16 --instances 4 --amp bf16 --channels-last \\
        --models baseline,esnet,bdb,pmm --compile compiled                               # the paper's batch, GPU

A step = forward (returns the loss dict) + backward of the summed loss + Adam step, on random normalised images with a
PK label layout. Every (model, eager | compiled) variant is warmed up first (compiled variants compile there:
``esreid.engine.compile.compile_model``, the regions of ``solver.compile``), then the variants' steps alternate in
blocks so that drift of a shared machine hits all of them. Printed per variant: median wall time per step and
images/s, the median process CPU time per step (on a busy shared machine it moves less than the wall time), and the
peak memory (CUDA: this variant's weights plus its warm-up's ``max_memory_allocated`` above what was allocated
before, so the other variants' weights do not count; CPU: the process peak RSS after this variant's warm-up, variants
warmed up in the order printed). Then the ratios: ES-Net / baseline
step time (goal <= 2.3x; the work floor is about 2.24x: AIB and ESB passes each cost one baseline step, plus the
ESB-stage forward of the saliency pass) and, with ``--compile both``, eager / compiled for each model.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from common import hardware, peak_rss_mb

from esreid.config import SolverConfig, load_config
from esreid.engine.compile import compile_model
from esreid.engine.evaluator import autocast
from esreid.engine.schedule import build_optimizer
from esreid.models import build_model

Step = Callable[[], Tuple[float, float]]


def make_step(model: torch.nn.Module, images: torch.Tensor, pids: torch.Tensor, device: torch.device,
              amp: str) -> Step:
    """A closure running one optimisation step; returns its (wall, process CPU) seconds (synchronised on CUDA)."""
    opt = build_optimizer(model, SolverConfig())
    model.train()

    def step() -> Tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = sum(model(images, pids).values())
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, time.process_time() - c0

    return step


def build(name: str, args: argparse.Namespace) -> torch.nn.Module:
    """Model ``name`` with its method's defaults, random init, for ``args.classes`` identities."""
    overrides = [f"model.name={name}", f"model.backbone={args.backbone}", f"data.height={args.height}",
                 f"data.width={args.width}", f"data.ids_per_batch={args.ids}", f"data.instances={args.instances}"]
    if name == "esnet":
        overrides.append(f"model.shared_until={args.shared_until}")
    cfg = load_config(None, overrides)
    return build_model(cfg.model, args.classes, cfg.test)


def own_peak_mb(device: torch.device, model: torch.nn.Module, warm_up: Callable[[], None]) -> float:
    """Peak memory of ``model`` during ``warm_up()`` (see the module docstring): on CUDA its weights plus what the
    warm-up allocates at most (activations, gradients, optimiser state)."""
    if device.type != "cuda":
        warm_up()
        return peak_rss_mb()
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    held = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    warm_up()
    return (torch.cuda.max_memory_allocated(device) - held + weights) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="baseline,esnet", help="comma-separated model names (default: %(default)s)")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--ids", type=int, default=4, help="J identities per batch")
    p.add_argument("--instances", type=int, default=2, help="K images per identity")
    p.add_argument("--classes", type=int, default=751, help="training identities (classifier size; Market: 751)")
    p.add_argument("--shared-until", default="layer2", choices=["layer2", "layer3", "layer4"])
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compiled: 2 cover train mode)")
    p.add_argument("--block", type=int, default=1, help="consecutive steps of one variant before switching")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true", help="models and images in channels_last memory format")
    p.add_argument("--compile", nargs="?", const="both", default="eager", choices=["eager", "both", "compiled"],
                   help="eager models only (default), eager and compiled side by side (--compile), or compiled only")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (aot_eager: the same graphs without code generation, for smoke runs)")
    p.add_argument("--json", help="also write {variant: {step_s, images_per_s, cpu_s, peak_mib}} to this file")
    args = p.parse_args()

    device = torch.device(args.device)
    batch = args.ids * args.instances
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    images = torch.randn(batch, 3, args.height, args.width, device=device).contiguous(memory_format=memory_format)
    pids = torch.arange(args.ids, device=device).repeat_interleave(args.instances)
    kinds = {"eager": ["eager"], "both": ["eager", "compiled"], "compiled": ["compiled"]}[args.compile]
    print(f"hardware: {hardware(device)}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"setting: {args.backbone}, {args.height}x{args.width}, batch {batch} ({args.ids}x{args.instances}), "
          f"{args.classes} classes, amp {args.amp}, channels_last {args.channels_last}, {'/'.join(kinds)}, ES-Net "
          f"shared_until={args.shared_until}; load average at start {load:.2f}")

    steps: Dict[str, Step] = {}
    memory: Dict[str, float] = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build(name, args).to(device, memory_format=memory_format)
        for kind in kinds:  # eager and compiled copies start from the same weights
            variant = model if kind == "eager" else copy.deepcopy(model)
            if kind == "compiled":
                compile_model(variant, backend=args.compile_backend)
            key = f"{name} {kind}"
            steps[key] = make_step(variant, images, pids, device, args.amp)
            t0 = time.perf_counter()
            memory[key] = own_peak_mb(device, variant, lambda s=steps[key]: [s() for _ in range(args.warmup)])
            print(f"{key:18s} warm-up {time.perf_counter() - t0:7.1f} s", flush=True)

    wall: Dict[str, List[float]] = {k: [] for k in steps}
    cpu: Dict[str, List[float]] = {k: [] for k in steps}
    while min(len(t) for t in wall.values()) < args.steps:
        for key, step in steps.items():
            for _ in range(args.block):
                w, c = step()
                wall[key].append(w)
                cpu[key].append(c)

    med = {k: statistics.median(v) for k, v in wall.items()}
    label = "peak CUDA memory" if device.type == "cuda" else "process peak RSS"
    for key in steps:
        print(f"{key:18s} median step {med[key] * 1e3:9.1f} ms ({batch / med[key]:8.1f} img/s), CPU "
              f"{statistics.median(cpu[key]) * 1e3:9.1f} ms; {label} {memory[key]:8.0f} MiB  "
              f"(steps: {', '.join(f'{t * 1e3:.0f}' for t in wall[key])} ms)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at the end {load:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({k: {"step_s": med[k], "images_per_s": batch / med[k], "cpu_s": statistics.median(cpu[k]),
                           "peak_mib": memory[k]} for k in steps}, f, indent=2)
    for kind in kinds:
        if {f"baseline {kind}", f"esnet {kind}"} <= set(med):
            print(f"ratio ES-Net / baseline step time ({kind}): {med[f'esnet {kind}'] / med[f'baseline {kind}']:.2f}x "
                  "(goal <= 2.3x; work floor ~2.24x)")
    if args.compile == "both":
        for name in args.models.split(","):
            e, c = f"{name} eager", f"{name} compiled"
            print(f"compile speed-up {name}: eager / compiled step time {med[e] / med[c]:.2f}x (wall), "
                  f"{statistics.median(cpu[e]) / statistics.median(cpu[c]):.2f}x (CPU time)")


if __name__ == "__main__":
    main()
