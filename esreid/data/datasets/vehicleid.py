"""VehicleID (Liu et al., CVPR 2016), Small / Medium / Large test sets of 800 / 1,600 / 2,400 identities.

Layout tried under ``root``: ``vehicleid/``, ``VehicleID_V1.0/``, ``VehicleID/``, root itself; each holding
``image/<name>.jpg`` and ``train_test_split/{train_list.txt, test_list_800.txt, test_list_1600.txt,
test_list_2400.txt}`` with lines ``<image name without .jpg> <vehicle id>``.

Every test image goes to ``query`` and ``gallery`` stays empty: the ``vehicleid`` protocol draws one gallery image
per identity per seeded trial. camid = the image's position in its list, i.e. unique per image, so the Market
"same id and same camera" junk rule never removes anything (fast-reid uses the image number, to the same effect).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from esreid.data.base import DATASETS, DatasetError, ImageItem, ReIDDataset, relabel
from esreid.data.datasets._common import announce, is_image, locate, probe, require_nonempty

TEST_SIZES = (800, 1600, 2400)


@DATASETS.register("vehicleid")
class VehicleID(ReIDDataset):
    name = "vehicleid"
    title = "VehicleID"
    protocol = "vehicleid"
    candidates = ("vehicleid", "VehicleID_V1.0", "VehicleID", "")
    required = ("image", "train_test_split/train_list.txt")
    # fast-reid docstrings (the torchreid / fast-reid loaders): test ids / images per size
    published_test = {800: (800, 6493), 1600: (1600, 13377), 2400: (2400, 19777)}

    @classmethod
    def check_options(cls, options: Dict[str, Any]) -> Optional[str]:
        problem = super().check_options(options)
        if problem is None and options.get("test_size", 800) not in TEST_SIZES:
            problem = f"option 'test_size': expected one of {TEST_SIZES}, got {options['test_size']!r}"
        return problem

    def __init__(self, root: str, test_size: int = 800, verbose: bool = True):
        problem = self.check_options({"test_size": test_size})
        if problem:
            raise DatasetError(f"VehicleID: {problem}")
        self.data_dir = locate(self.title, root, self.candidates, self.required)
        train = self._read_list("train_list.txt")
        test = self._read_list(f"test_list_{test_size}.txt")
        self.published = {"train": (13164, 113346), "query": self.published_test[test_size], "gallery": (0, 0)}
        self.ignored_files = 0
        super().__init__(relabel(train), test, [])
        announce(self, verbose)

    def _read_list(self, list_name: str) -> List[ImageItem]:
        list_path = os.path.join(self.data_dir, "train_test_split", list_name)
        if not os.path.isfile(list_path):
            raise DatasetError(f"VehicleID: expected the list file {list_path}, not found")
        image_dir = os.path.join(self.data_dir, "image")
        items = []
        with open(list_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                    where = f"VehicleID: {list_path} line {lineno}"
                    raise DatasetError(f"{where}: expected '<image name> <vehicle id>', got {line.strip()!r}")
                name = fields[0] if is_image(fields[0]) else fields[0] + ".jpg"
                path = os.path.join(image_dir, name)
                if not os.path.isfile(path):
                    raise DatasetError(f"VehicleID: {list_path} line {lineno}: the listed image {path} does not exist")
                items.append(ImageItem(path, int(fields[1]), len(items)))
        require_nonempty(self.title, list_name, items, list_path)
        return items

    @classmethod
    def probe(cls, root: str) -> bool:
        return probe(root, cls.candidates, cls.required)
