"""``esreid datasets check --root R [--verify]``: find the datasets under R, print their summaries and mismatches.

A dataset is "found" when its named folder (e.g. ``market1501/``) or its layout is under R; it is then loaded with
every variant that has its own published counts (CUHK03 detected / labeled, VehicleID 800 / 1600 / 2400). A layout
that is found but cannot be loaded is reported with its :class:`DatasetError` message.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import esreid.data.datasets  # noqa: F401  (registers the loaders)
from esreid.data.base import DATASETS, DatasetError

# (registry name, options) per variant worth checking; custom data has no published counts and no fixed layout
VARIANTS: List[Tuple[str, Dict[str, Any]]] = [
    ("market1501", {}),
    ("dukemtmcreid", {}),
    ("msmt17", {}),
    ("cuhk03", {"labeled": False}),
    ("cuhk03", {"labeled": True}),
    ("veri776", {}),
    ("vehicleid", {"test_size": 800}),
    ("vehicleid", {"test_size": 1600}),
    ("vehicleid", {"test_size": 2400}),
]


def check_main(root: str, verify_counts: bool) -> int:
    """Print the summary of every dataset found under ``root``; 0 when all load (and match, with verify_counts)."""
    if not os.path.isdir(root):
        print(f"{root} is not a folder (expected the folder that holds the datasets, e.g. data/ with market1501/ "
              "inside)")
        return 1
    found = errors = 0
    for name, options in VARIANTS:
        cls = DATASETS.get(name)
        if not cls.probe(root):
            continue
        found += 1
        label = name + "".join(f" {k}={v}" for k, v in options.items())
        print(f"--- {label}")
        try:
            ds = cls(root, verbose=True, **options)
        except DatasetError as e:
            print(f"  ERROR: {e}")
            errors += 1
            continue
        if verify_counts:
            problems = ds.check_counts()
            for p in problems:
                print(f"  MISMATCH with the published counts: {p}")
            if not problems:
                print("  counts match the published ones")
            errors += bool(problems)
    if not found:
        print(f"no known dataset under {root} (looked for: {', '.join(sorted({n for n, _ in VARIANTS}))})")
        return 1
    return 1 if errors else 0
