"""Helpers shared by the benchmark scripts: the hardware label printed with every figure, and peak memory."""

from __future__ import annotations

import os
import platform
import resource
from typing import Optional

import numpy as np
import torch


def hardware(device: Optional[torch.device] = None) -> str:
    """``"<CPU or GPU model>, <cores>, torch threads, versions"`` for labelling absolute figures."""
    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine() or model
    return (f"{model}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}")


def peak_rss_mb() -> float:
    """This process's peak resident set in MiB (VmHWM; ru_maxrss would include the parent's RSS at fork time)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
