"""Users' own data: a folder per identity, or CSV files ``path,pid,camid``.

Either layout under ``root``, one entry per split (train, query, gallery)::

    root/{train,query,gallery}.csv      header 'path,pid,camid'; paths relative to root (or absolute)
    root/{train,query,gallery}/<identity>/<image>             camera unknown
    root/{train,query,gallery}/<identity>/<camera>/<image>    camera = the sub-folder

CSV files win when both are present. Folder identities are numbers when every identity folder name is a number,
otherwise their index in the sorted set of names across the splits (so query and gallery agree). Camera sub-folders
become their index in the sorted set of camera names. Without camera folders the camera is unknown; we choose
camid 0 for train and query and 1 for the gallery so that the Market junk rule (same id and same camera) removes
nothing - a choice of ours, not a published convention.
"""

from __future__ import annotations

import csv
import os
from typing import Dict, List, Tuple

from esreid.data.base import DATASETS, DatasetError, ImageItem, ReIDDataset, relabel
from esreid.data.datasets._common import announce, image_file, is_image, require_nonempty

SPLITS = ("train", "query", "gallery")
_UNKNOWN_CAMERA = {"train": 0, "query": 0, "gallery": 1}
_HEADER = ["path", "pid", "camid"]


def read_csv_split(root: str, split: str) -> List[ImageItem]:
    csv_path = os.path.join(root, f"{split}.csv")
    items = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = [h.strip() for h in next(rows, [])]
        if header != _HEADER:
            raise DatasetError(f"custom dataset: {csv_path}: expected the header 'path,pid,camid', got {header}")
        for lineno, row in enumerate(rows, 2):
            if not row:
                continue
            where = f"custom dataset: {csv_path} line {lineno}"
            try:
                path, pid, camid = row[0].strip(), int(row[1]), int(row[2])
            except (ValueError, IndexError):
                raise DatasetError(f"{where}: expected '<path>,<integer pid>,<integer camid>', got {row}") from None
            path = os.path.abspath(os.path.join(root, path))
            if camid < 0:
                raise DatasetError(f"{where}: camid must be >= 0, got {camid}")
            if not os.path.exists(path):
                raise DatasetError(f"{where}: the image {path} does not exist")
            image_file(path)
            items.append(ImageItem(path, pid, camid))
    return items


def _walk_folder_split(split_dir: str) -> Tuple[List[Tuple[str, str, str]], int]:
    """(path, identity, camera name or "") for each image, and the number of non-image files skipped."""
    found, ignored = [], 0
    for identity in sorted(os.listdir(split_dir)):
        id_dir = os.path.join(split_dir, identity)
        if not os.path.isdir(id_dir):
            ignored += 1
            continue
        for entry in sorted(os.listdir(id_dir)):
            path = os.path.join(id_dir, entry)
            if os.path.isdir(path):
                for name in sorted(os.listdir(path)):
                    if is_image(name):
                        found.append((os.path.abspath(image_file(os.path.join(path, name))), identity, entry))
                    else:
                        ignored += 1
            elif is_image(entry):
                found.append((os.path.abspath(image_file(path)), identity, ""))
            else:
                ignored += 1
    return found, ignored


def read_folder_splits(root: str) -> Tuple[Dict[str, List[ImageItem]], int]:
    raw, ignored = {}, 0
    for split in SPLITS:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            raise DatasetError(
                f"custom dataset: expected {split_dir}/ (a folder per identity) or {split_dir}.csv, found neither"
            )
        raw[split], n = _walk_folder_split(split_dir)
        ignored += n
    identities = sorted({ident for found in raw.values() for _, ident, _ in found})
    numeric = all(i.isdigit() for i in identities)
    pid_of = {i: int(i) if numeric else k for k, i in enumerate(identities)}
    cam_of = {c: k for k, c in enumerate(sorted({cam for found in raw.values() for _, _, cam in found if cam}))}
    splits = {
        split: [ImageItem(p, pid_of[i], cam_of[c] if c else _UNKNOWN_CAMERA[split]) for p, i, c in found]
        for split, found in raw.items()
    }
    return splits, ignored


@DATASETS.register("custom")
class CustomDataset(ReIDDataset):
    name = "custom"
    protocol = "market"
    published: Dict[str, tuple] = {}

    def __init__(self, root: str, verbose: bool = True):
        if not os.path.isdir(root):
            raise DatasetError(f"custom dataset: root {root} does not exist (expected train/ query/ gallery/ or *.csv)")
        if all(os.path.isfile(os.path.join(root, f"{s}.csv")) for s in SPLITS):
            splits, self.ignored_files = {s: read_csv_split(root, s) for s in SPLITS}, 0
        else:
            splits, self.ignored_files = read_folder_splits(root)
        for split in SPLITS:
            require_nonempty("custom dataset", split, splits[split], os.path.join(root, split))
        super().__init__(relabel(splits["train"]), splits["query"], splits["gallery"])
        announce(self, verbose)
