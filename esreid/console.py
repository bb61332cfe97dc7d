"""What a person watching the console sees: progress bars (only on a terminal), durations, peak memory, and the run
log that copies every console line into ``log.txt``.

Progress bars are for people: :func:`progress` draws a tqdm bar with a rate and an ETA only when stderr is a
terminal, so a redirected log (``esreid train ... > run.log 2>&1``, CI, nohup) gets the one line per epoch and no
carriage-return updates.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Iterable, Optional, TextIO

from esreid.files import append_text


def interactive(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (default: the current ``sys.stderr``, where tqdm draws) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(iterable: Iterable, desc: str, total: Optional[int] = None, unit: str = "batch",
             enabled: bool = True) -> Any:
    """``iterable`` wrapped in a tqdm bar (elapsed time, rate, ETA) when ``enabled`` and stderr is a terminal; a
    disabled tqdm (no output at all, ``set_postfix`` still allowed) otherwise. The bar is removed when done."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True,
                disable=not (enabled and interactive()))


def format_seconds(s: float) -> str:
    """``0.32 s``, ``57 s``, ``1 min 57 s``, ``2 h 05 min``."""
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def peak_memory_mb(device: Any) -> float:
    """Peak memory of this process in MiB: the most ever allocated by tensors on a CUDA ``device``
    (``torch.cuda.max_memory_allocated``), else the peak resident set size (``getrusage``; data-loader workers are
    processes of their own and not included)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class RunLog:
    """A log function (``log(line)``) that passes every line to ``echo`` (the console) and appends it to ``path``
    (``<output_dir>/log.txt``), so the file holds what the console showed. Appending: a resumed run continues the
    file. A line that cannot be written raises :class:`~esreid.files.StorageError`."""

    def __init__(self, echo: Callable[[str], None], path: str):
        self.echo, self.path = echo, path

    def __call__(self, line: str) -> None:
        self.echo(line)
        append_text(self.path, line + "\n")

    def start(self, what: str) -> None:
        """The first line of a run: date, command and where its files go."""
        self(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')}  {what}  (log: {os.path.abspath(self.path)})")
