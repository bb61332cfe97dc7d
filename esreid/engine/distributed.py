"""Multi-process (DDP) training under ``torchrun``.

``torchrun --nproc_per_node=N -m esreid.cli train --config ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; each
process then trains on its own PK batches (J x K images per process, so the global batch is N x J x K) and
gradients are averaged by :class:`torch.nn.parallel.DistributedDataParallel`. Rank 0 alone evaluates, logs and writes
checkpoints. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); a no-op otherwise.

    On CUDA each process uses ``cuda:LOCAL_RANK``; returns the rank information.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
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
