"""Cost of checkpoint integrity: ``atomic_save`` / ``load_checkpoint`` (SHA-256 footer written and verified) against
the same atomic write and ``torch.load`` without the checksum, on a real backbone's state dict.

Save: ``atomic_save`` (free-space check, hashing writer, footer) vs ``files.atomic_writer`` + ``torch.save`` (the
temporary file, fsync and rename alone). Load: ``load_checkpoint`` (hash pass over the file, then ``torch.load``)
vs ``torch.load(weights_only=True)``. Runs alternate between the two, medians are printed with their ratio. Loads
read from the page cache (the file was just written); a cold disk read would add the same time to both.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/checkpoint_io.py [--backbone resnet50] [--runs 7] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time

import torch
from common import hardware

from esreid.engine.checkpoint import atomic_save, load_checkpoint
from esreid.files import atomic_writer, format_size
from esreid.models.backbones import build_backbone


def plain_save(obj, path: str) -> None:
    with atomic_writer(path) as f:
        torch.save(obj, f)


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def compare(name: str, measured, reference, runs: int) -> None:
    """Alternate ``measured()`` and ``reference()`` ``runs`` times (after one warm-up each); print medians, ratio."""
    measured(), reference()
    times = {"esreid": [], "reference": []}
    for _ in range(runs):
        times["esreid"].append(timed(measured))
        times["reference"].append(timed(reference))
    a, b = statistics.median(times["esreid"]), statistics.median(times["reference"])
    print(f"{name}: esreid {1000 * a:.1f} ms, reference {1000 * b:.1f} ms (medians of {runs}), "
          f"ratio {a / b:.3f}, overhead {1000 * (a - b):+.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dir", default=None, help="folder for the files (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("hardware:", hardware())
    state = build_backbone(args.backbone).state_dict()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ours, ref = os.path.join(tmp, "ours.pth"), os.path.join(tmp, "ref.pth")
        atomic_save(state, ours)
        plain_save(state, ref)
        print(f"{args.backbone} state dict: {len(state)} tensors, file {format_size(os.path.getsize(ours))} in {tmp}")
        with open(ours, "rb") as f:
            data = f.read()
        t = min(timed(hashlib.sha256, data) for _ in range(3))
        print(f"sha256 alone: {1000 * t:.1f} ms ({len(data) / t / 1e9:.2f} GB/s)")
        compare("save", lambda: atomic_save(state, ours), lambda: plain_save(state, ref), args.runs)
        compare("load", lambda: load_checkpoint(ours), lambda: torch.load(ref, weights_only=True), args.runs)


if __name__ == "__main__":
    main()
