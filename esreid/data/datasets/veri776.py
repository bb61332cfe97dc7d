"""VeRi-776 (Liu et al., ICME 2016 / ECCV 2016), evaluated with the Market protocol (as fast-reid, BoT, AGW).

Layout tried under ``root``: ``veri/``, ``VeRi/``, ``VeRi-776/``, root itself; each holding
``image_train/ image_query/ image_test/``. Names ``0002_c002_00030600_0.jpg``: vehicle id, camera c001..c020
(-> camid 0..19). The release's list / xml files are not read (neither torchreid's nor fast-reid's loader does).
"""

from __future__ import annotations

from esreid.data.base import DATASETS
from esreid.data.datasets._common import PidCamFolderDataset


@DATASETS.register("veri776")
class VeRi776(PidCamFolderDataset):
    name = "veri776"
    title = "VeRi-776"
    protocol = "market"
    candidates = ("veri", "VeRi", "VeRi-776", "")
    folders = {"train": "image_train", "query": "image_query", "gallery": "image_test"}
    num_cams = 20
    max_pid = 776
    example = "0002_c002_00030600_0.jpg"
    # VeRi-776 (Liu et al., ICME 2016; torchreid / fast-reid docstrings): 776 ids = 576 train + 200 test, 37,778 /
    # 1,678 / 11,579 images, 20 cameras (the query split covers 19 of them). Settled: 576, the paper's count; a
    # release whose loader finds 575 is reported by `esreid datasets check` as a mismatch, not hidden.
    published = {"train": (576, 37778), "query": (200, 1678), "gallery": (200, 11579)}

    def __init__(self, root: str, verbose: bool = True):
        super().__init__(root, verbose=verbose)
