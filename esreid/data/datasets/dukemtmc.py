"""DukeMTMC-reID (Zheng et al., ICCV 2017 / Ristani et al., ECCVW 2016).

Layout tried under ``root``: ``dukemtmc-reid/DukeMTMC-reID/``, ``DukeMTMC-reID/``, ``dukemtmc-reid/``, root itself;
each holding ``bounding_box_train/ query/ bounding_box_test/``. Names ``0001_c2_f0046182.jpg``: pid, camera 1..8.
The gallery holds 408 extra distractor identities with ordinary pids (the torchreid / fast-reid loaders).
"""

from __future__ import annotations

from esreid.data.base import DATASETS
from esreid.data.datasets._common import PidCamFolderDataset


@DATASETS.register("dukemtmcreid")
class DukeMTMCreID(PidCamFolderDataset):
    name = "dukemtmcreid"
    title = "DukeMTMC-reID"
    protocol = "market"
    candidates = ("dukemtmc-reid/DukeMTMC-reID", "DukeMTMC-reID", "dukemtmc-reid", "")
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    num_cams = 8
    max_pid = 9999  # Duke pids are 4-digit; no tighter bound is documented
    example = "0001_c2_f0046182.jpg"
    # the torchreid / fast-reid loaders
    published = {"train": (702, 16522), "query": (702, 2228), "gallery": (1110, 17661)}

    def __init__(self, root: str, verbose: bool = True):
        super().__init__(root, verbose=verbose)
