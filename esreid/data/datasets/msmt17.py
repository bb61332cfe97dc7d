"""MSMT17 (Wei et al., CVPR 2018), V1 or V2, read from its list files.

Layouts tried under ``root`` (V1 before V2, as torchreid): ``msmt17/MSMT17_V1/``, ``msmt17/MSMT17_V2/``,
``MSMT17_V1/``, ``MSMT17_V2/``, root itself. V1 holds ``train/ test/``, V2 ``mask_train_v2/ mask_test_v2/``; both
hold ``list_{train,val,query,gallery}.txt`` with lines ``<pid folder>/<name>.jpg <pid>``, paths relative to the
train folder (train, val lists) or the test folder (query, gallery lists).

The pid comes from the list; the camera from the name's third field (``0000_000_01_0303morning_0015_0.jpg`` ->
camera 01 -> camid 0). ``list_val`` (2,373 images of the train identities) joins train only with
``combine_val=True``, as torchreid's ``combineall``.
"""

from __future__ import annotations

import os
from typing import List

from esreid.data.base import DATASETS, DatasetError, ImageItem, ReIDDataset, relabel
from esreid.data.datasets._common import announce, locate, probe, require_nonempty

_VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
NUM_CAMS = 15


@DATASETS.register("msmt17")
class MSMT17(ReIDDataset):
    name = "msmt17"
    title = "MSMT17"
    protocol = "market"
    candidates = ("msmt17/MSMT17_V1", "msmt17/MSMT17_V2", "MSMT17_V1", "MSMT17_V2", "msmt17", "")
    # The paper's and the torchreid / fast-reid docstrings' 32,621 train images are list_train + list_val; both
    # loaders train on list_train alone by default (list_val only with combineall), i.e. 32,621 - 2,373 = 30,248.
    # Settled: 30,248 by default, 32,621 with combine_val; `esreid datasets check` reports a release that differs.
    published = {"train": (1041, 30248), "query": (3060, 11659), "gallery": (3060, 82161)}
    published_with_val = {"train": (1041, 32621), "query": (3060, 11659), "gallery": (3060, 82161)}

    def __init__(self, root: str, combine_val: bool = False, verbose: bool = True):
        self.data_dir = locate(self.title, root, self.candidates, _LISTS[:1] + _LISTS[2:])
        train_dir, test_dir = self._image_dirs()
        train = self._read_list("list_train.txt", train_dir)
        if combine_val:
            train += self._read_list("list_val.txt", train_dir)
            self.published = self.published_with_val
        query = self._read_list("list_query.txt", test_dir)
        gallery = self._read_list("list_gallery.txt", test_dir)
        self.ignored_files = 0
        super().__init__(relabel(train), query, gallery)
        announce(self, verbose)

    def _image_dirs(self):
        for dirs in _VERSIONS.values():
            if all(os.path.isdir(os.path.join(self.data_dir, d)) for d in dirs):
                return tuple(os.path.join(self.data_dir, d) for d in dirs)
        expected = " or ".join(f"'{a}/' + '{b}/' ({v})" for v, (a, b) in _VERSIONS.items())
        raise DatasetError(f"{self.title}: found the lists in {self.data_dir} but not the image folders {expected}")

    def _read_list(self, list_name: str, image_dir: str) -> List[ImageItem]:
        list_path = os.path.join(self.data_dir, list_name)
        if not os.path.isfile(list_path):
            raise DatasetError(f"{self.title}: expected the list file {list_path}, not found")
        items = []
        with open(list_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                items.append(self._parse_line(line, list_path, lineno, image_dir))
        require_nonempty(self.title, list_name, items, list_path)
        return items

    def _parse_line(self, line: str, list_path: str, lineno: int, image_dir: str) -> ImageItem:
        where = f"{self.title}: {list_path} line {lineno}"
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise DatasetError(f"{where}: expected '<relative image path> <pid>', got {line.strip()!r}")
        rel, pid = fields[0], int(fields[1])
        parts = os.path.basename(rel).split("_")
        if len(parts) < 3 or not parts[2].isdigit() or not 1 <= int(parts[2]) <= NUM_CAMS:
            raise DatasetError(
                f"{where}: cannot read the camera from {rel!r}: expected '<pid>_<n>_<camera 01..{NUM_CAMS}>_...jpg'"
            )
        path = os.path.join(image_dir, rel)
        if not os.path.isfile(path):
            raise DatasetError(f"{where}: the listed image {path} does not exist")
        return ImageItem(path, pid, int(parts[2]) - 1)

    @classmethod
    def probe(cls, root: str) -> bool:
        return probe(root, cls.candidates, _LISTS[:1] + _LISTS[2:])
