"""Multi-process (DDP) training under ``torchrun``.

``torchrun --nproc_per_node=N -m esreid.cli train --config ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; each
process then trains on its own PK batches (J x K images per process, so the global batch is N x J x K) and
gradients are averaged by :class:`torch.nn.parallel.DistributedDataParallel`. Rank 0 alone evaluates, logs and writes
checkpoints. NCCL on GPUs, gloo on CPUs.

A worker never outlives its launcher: each asks the kernel to send it SIGTERM when its parent dies
(:func:`die_with_parent`), so killing ``torchrun`` (even with SIGKILL, which it cannot forward) ends the workers too
instead of leaving them training and holding the GPUs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_rank() -> int:
    """This process's rank as the launcher set it (``RANK``; 0 outside torchrun), before the process group exists."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def die_with_parent() -> None:
    """Linux: SIGTERM to this process when its parent (the launcher) dies; exit at once if it is already gone
    (reparented before the request was made). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not permitted here (e.g. a seccomp filter): the launcher's own clean-up is all there is
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); a no-op otherwise.

    On CUDA each process uses ``cuda:LOCAL_RANK``; the process ends when its launcher dies (:func:`die_with_parent`).
    Returns the rank information.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    die_with_parent()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather(info: DistInfo, obj: Any) -> List[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` without DDP); every rank must call it."""
    if not info.enabled:
        return [obj]
    out: List[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
