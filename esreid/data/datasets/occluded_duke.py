"""Occluded-DukeMTMC (Miao et al., "Pose-Guided Feature Alignment for Occluded Person Re-Identification", ICCV 2019).

A re-split of DukeMTMC-reID in which every query image and about 10% of the gallery show an occluded person. Its
images are not distributed: the authors' repository (lightas/Occluded-DukeMTMC-Dataset) ships the three name lists
``Occluded_Duke/{train,query,gallery}.list`` and ``convert_duke_to_occduke.py``, which copies the listed images out of
``DukeMTMC-reID.zip`` into ``Occluded_Duke/{bounding_box_train,query,bounding_box_test}`` (query images come from the
original query or gallery folders: occluded gallery images were moved to the query). So a converted copy holds the
three image folders *and* the three ``.list`` files side by side (the script reads the lists from its output
folder), named as DukeMTMC-reID (``0001_c2_f0046182.jpg``: pid, camera 1..8).

Layout tried under ``root``: ``Occluded_Duke/`` (the script's output folder), ``occluded_duke/``,
``Occluded-DukeMTMC/``, root itself. When the ``.list`` files are there, each split must hold exactly the images its
list names (a partial copy, e.g. an interrupted conversion, is reported with the first missing or extra image);
non-image files (the lists, ``Thumbs.db``) are skipped. An ``Occluded_Duke/DukeMTMC-reID/`` folder without the
converted splits is a conversion that did not finish (the script extracts the zip there and deletes it at the end).

Counts (the name lists of the authors' repository, and the paper's Table 1): train 702 ids / 15,618 images,
query 519 / 2,210, gallery 1,110 / 17,661. Evaluated with the Market protocol (the authors' code base is the Duke
one: same-camera matches of a query identity are junk).
"""

from __future__ import annotations

import os

from esreid.data.base import DATASETS, DatasetError
from esreid.data.datasets.dukemtmc import DukeMTMCreID

LISTS = {"train": "train.list", "query": "query.list", "gallery": "gallery.list"}


@DATASETS.register("occluded_duke")
class OccludedDukeMTMC(DukeMTMCreID):
    """DukeMTMC-reID's folders, names, cameras and protocol, in the converted folder, with its own counts."""

    name = "occluded_duke"
    title = "Occluded-DukeMTMC"
    candidates = ("Occluded_Duke", "occluded_duke", "Occluded-DukeMTMC", "")
    published = {"train": (702, 15618), "query": (519, 2210), "gallery": (1110, 17661)}

    def __init__(self, root: str, verbose: bool = True):
        for candidate in self.candidates[:-1]:
            folder = os.path.join(root, candidate)
            unfinished = os.path.isdir(os.path.join(folder, "DukeMTMC-reID")) and not all(
                os.path.isdir(os.path.join(folder, f)) for f in self.folders.values())
            if unfinished:  # the script extracts the zip there, copies the splits out, then deletes it
                raise DatasetError(f"{self.title}: {folder} holds the extracted DukeMTMC-reID/ but not the converted "
                                   f"splits ({', '.join(self.folders.values())}): convert_duke_to_occduke.py did not "
                                   "finish; run it again")
        super().__init__(root, verbose=verbose)
        for split, list_name in LISTS.items():
            self._check_list(split, list_name)

    @classmethod
    def probe(cls, root: str) -> bool:
        """A named folder (``Occluded_Duke/`` ...), or the layout in root itself *with* its name lists (without them
        a flat DukeMTMC-reID copy would look the same)."""
        named = any(os.path.isdir(os.path.join(root, c)) for c in cls.candidates if c)
        return named or (super().probe(root) and os.path.isfile(os.path.join(root, LISTS["query"])))

    def _check_list(self, split: str, list_name: str) -> None:
        """The images of ``split`` are exactly those of its name list, when the list is there."""
        path = os.path.join(self.data_dir, list_name)
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as f:
            listed = {line.strip() for line in f if line.strip()}
        found = {os.path.basename(it.path) for it in getattr(self, split)}
        missing, extra = sorted(listed - found), sorted(found - listed)
        folder = os.path.join(self.data_dir, self.folders[split])
        if missing:
            raise DatasetError(f"{self.title}: {folder} lacks {len(missing)} of the {len(listed)} images {path} "
                               f"lists (e.g. {missing[0]}): an interrupted convert_duke_to_occduke.py? run it again")
        if extra:
            raise DatasetError(f"{self.title}: {folder} holds {len(extra)} image(s) {path} does not list (e.g. "
                               f"{extra[0]}): not the Occluded-DukeMTMC split; convert again into an empty folder")
