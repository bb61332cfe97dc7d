"""``esreid datasets check --root R [--verify]``: find the datasets under R, print their summaries and mismatches.

A known dataset is "found" when its named folder (e.g. ``market1501/``) or its layout is under R; it is then loaded
with every variant that has its own published counts (CUHK03 detected / labeled, VehicleID 800 / 1600 / 2400).
Custom data (:mod:`esreid.data.datasets.custom`) is found in R itself or in a folder of R that holds a
``{train,query,gallery}.csv`` or two of the ``train/ query/ gallery/`` folders; it has no published counts. A layout
that is found but cannot be loaded is reported with its :class:`DatasetError` message, and the check ends with a
:class:`DatasetError` naming every dataset with a problem.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Tuple

from esreid.data.base import DATASETS, DatasetError
from esreid.data.datasets.custom import SPLITS

# (registry name, options) per variant worth checking; custom data has no published counts and no fixed folder name
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


def looks_custom(folder: str) -> bool:
    """Whether ``folder`` holds (part of) a custom layout: a split .csv, or at least two split folders."""
    csvs = any(os.path.isfile(os.path.join(folder, f"{s}.csv")) for s in SPLITS)
    return csvs or sum(os.path.isdir(os.path.join(folder, s)) for s in SPLITS) >= 2


def found_datasets(root: str) -> Iterator[Tuple[str, str, str, Dict[str, Any]]]:
    """``(label, registry name, dataset root, options)`` of every dataset found under ``root``."""
    for name, options in VARIANTS:
        if DATASETS.get(name).probe(root):
            yield name + "".join(f" {k}={v}" for k, v in options.items()), name, root, options
    with os.scandir(root) as it:
        subdirs = sorted(e.path for e in it if e.is_dir() and not e.name.startswith("."))
    for folder in [root] + subdirs:
        if looks_custom(folder):
            yield f"custom data.root={folder}", "custom", folder, {}


def check_main(root: str, verify_counts: bool) -> int:
    """Print the summary of every dataset found under ``root``; 0 when all load (and match, with verify_counts),
    else a :class:`DatasetError` naming the ones that do not."""
    if not os.path.isdir(root):
        raise DatasetError(f"datasets check: {root} is not a folder (expected the folder that holds the datasets, "
                           "e.g. data/ with market1501/ inside, or custom data)")
    labels, problems = [], []
    for label, name, data_root, options in found_datasets(root):
        labels.append(label)
        print(f"--- {label}")
        try:
            ds = DATASETS.get(name)(data_root, verbose=True, **options)
        except DatasetError as e:
            print(f"  ERROR: {e}")
            problems.append(f"{label} (cannot be loaded)")
            continue
        if not verify_counts:
            continue
        if not ds.published:
            print("  no published counts to compare with")
            continue
        mismatches = ds.check_counts()
        for m in mismatches:
            print(f"  MISMATCH with the published counts: {m}")
        if mismatches:
            problems.append(f"{label} (counts)")
        else:
            print("  counts match the published ones")
    if not labels:
        known = ", ".join(sorted({n for n, _ in VARIANTS}))
        raise DatasetError(f"datasets check: no known dataset under {root} (looked for: {known}; and custom data: "
                           "{train,query,gallery}.csv or train/ query/ gallery/ folders)")
    if problems:
        raise DatasetError(f"datasets check: {len(problems)} of {len(labels)} datasets under {root} have problems "
                           f"(see above): {', '.join(problems)}")
    return 0
