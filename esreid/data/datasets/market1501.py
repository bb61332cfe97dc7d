"""Market-1501 (Zheng et al., ICCV 2015).

Layout (torchreid, with fast-reid / BoT fallbacks), tried in this order under ``root``::

    market1501/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}
    market1501/{...}   Market-1501-v15.09.15/{...}   {...} directly under root

File names ``0002_c1s1_000451_03.jpg``: pid 0002, camera 1 (1..6 -> camid 0..5). pid -1 (junk) is dropped at load,
pid 0 (false detections) stays in the gallery as distractors (the torchreid / fast-reid loaders). With
``distractors_500k=True`` the images of ``<dataset>/images`` (torchreid's ``market1501_500k`` folder name) are
added to the gallery.
"""

from __future__ import annotations

from esreid.data.base import DATASETS
from esreid.data.datasets._common import PidCamFolderDataset


@DATASETS.register("market1501")
class Market1501(PidCamFolderDataset):
    name = "market1501"
    title = "Market-1501"
    protocol = "market"
    candidates = ("market1501/Market-1501-v15.09.15", "market1501", "Market-1501-v15.09.15", "")
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    num_cams = 6
    max_pid = 1501
    example = "0002_c1s1_000451_03.jpg"
    # the torchreid / fast-reid loaders: gallery 751 ids (750 + pid 0) / 15,913 images (19,732 minus 3,819 junk -1)
    published = {"train": (751, 12936), "query": (750, 3368), "gallery": (751, 15913)}

    def __init__(self, root: str, distractors_500k: bool = False, verbose: bool = True):
        # The 500k distractors (``images/``) join the gallery as in torchreid's market1501_500k (``gallery +=
        # process_dir(extra_gallery_dir)``: the same regex and the same pid -1 drop). Settled: their pids are whatever
        # their names say, as there; the gallery count is then not checked (no loader publishes it).
        super().__init__(root, verbose=verbose, extra_gallery="images" if distractors_500k else "")
        if distractors_500k:
            self.published = {k: v for k, v in self.published.items() if k != "gallery"}
