"""Intra-op CPU threads: the one rule every command applies (config key ``threads: auto | N``).

``N`` sets exactly N threads. ``auto``:

1. ``OMP_NUM_THREADS`` when it is set (the user, a batch system or ``torchrun`` decided);
2. otherwise the cores left free: the cores this process may run on (its CPU affinity), minus one per data-loader
   worker (``data.workers``: each keeps a core busy decoding), minus the cores other processes keep busy (the
   1-minute load average, rounded), and at least 1.

Why: PyTorch's CPU kernels split work across all cores and wait for the slowest part, so a thread that shares its
core with another busy process stalls every operation. On a shared 2-core machine a tiny training run took 76 s
with torch's default (2 threads) and 14 s with one; README "Threads" has the measured table
(``benchmarks/threads.py``). The trainer (also through the Python API), ``esreid eval``, ``extract``, ``export``,
``visualize`` and ``demo`` call :func:`apply_threads` before any work, so the start banner shows the result.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Union

import torch


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_cores() -> float:
    """Cores kept busy by runnable processes: the 1-minute load average (0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def auto_threads(workers: int, cores: Optional[int] = None, busy: Optional[float] = None,
                 environ: Optional[Mapping[str, str]] = None) -> int:
    """The ``auto`` rule (module docstring); ``cores``, ``busy`` and ``environ`` default to this machine's."""
    environ = os.environ if environ is None else environ
    try:
        requested = int(environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        requested = 0  # unset or not a number: the OpenMP runtime ignores it too
    if requested >= 1:
        return requested
    cores = usable_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores - workers, cores - round(busy)))


def resolve_threads(setting: Union[int, str], workers: int) -> int:
    """Threads for the config value ``setting`` (``"auto"`` or a positive integer) with ``workers`` loader
    workers."""
    return auto_threads(workers) if setting == "auto" else int(setting)


def apply_threads(cfg) -> int:
    """Set torch's intra-op threads for a loaded config (``cfg.threads``, ``cfg.data.workers``); returns the number."""
    n = resolve_threads(cfg.threads, cfg.data.workers)
    torch.set_num_threads(n)
    return n
