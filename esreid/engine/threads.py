"""Intra-op CPU threads: the one rule every command applies (config key ``threads: auto | N``).

``N`` sets exactly N threads. ``auto``:

1. ``OMP_NUM_THREADS`` when it is set (the user, a batch system or ``torchrun`` decided);
2. otherwise the cores left free: the cores this process may run on (its CPU affinity), minus one per data-loader
   worker (``data.workers``: each keeps a core busy decoding), minus the cores other processes keep busy (those
   cores' busy time over a quarter of a second from ``/proc/stat``, while this process sleeps, rounded; the 1-minute
   load average where there is no ``/proc/stat``), and at least 1.

Why: PyTorch's CPU kernels split work across all cores and wait for the slowest part, so a thread that shares its
core with another busy process stalls every operation. On a shared 2-core machine a tiny ES-Net training run took
12.7 s with torch's default (2 threads) and 5.1 s with ``auto`` (1 thread); with one more busy process 45.9 s and
11.2 s (README "Speed", ``benchmarks/threads.py``). The trainer (also through the Python API), ``esreid eval``,
``extract``, ``export``, ``explain``, ``visualize``, ``demo`` and ``FeatureExtractor`` call :func:`apply_threads`
before any work, so the start banner shows the result.
"""

from __future__ import annotations

import os
import time
from typing import Mapping, Optional, Set, Tuple, Union

import torch


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_times(cpus: Set[int]) -> Tuple[float, float]:
    """(total, idle) time so far of the CPUs ``cpus``, summed over their ``/proc/stat`` lines (clock ticks)."""
    total = idle = 0.0
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                ticks = [float(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                total += sum(ticks)
                idle += ticks[3] + ticks[4]
    return total, idle


def busy_cores(window: float = 0.25) -> float:
    """Cores of this process's affinity kept busy by other processes: their non-idle share over ``window`` seconds
    while this process sleeps (``/proc/stat``); elsewhere the 1-minute load average (0 where there is none either)."""
    try:
        cpus = os.sched_getaffinity(0)
        total0, idle0 = _cpu_times(cpus)
        time.sleep(window)
        total1, idle1 = _cpu_times(cpus)
    except (AttributeError, OSError, ValueError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0
    total = total1 - total0
    return len(cpus) * (1.0 - (idle1 - idle0) / total) if total > 0 else 0.0


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
