"""Shared helpers of the dataset loaders: locating a layout, listing images, the one ``<pid>_c<cam>`` parser.

Every problem raises :class:`~esreid.data.base.DatasetError` naming the path, what was expected and where the
loader looked.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from esreid.data.base import DatasetError, ImageItem, ReIDDataset, check_regular_file, relabel

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_TOO_DEEP_LEVELS = 3  # how far below root we search for a misplaced layout when reporting an error


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def list_images(folder: str) -> Tuple[List[str], int]:
    """Sorted absolute paths of the images directly in ``folder`` and the number of other files skipped.

    Non-image files (``Thumbs.db``, ``.DS_Store``, readme files) are skipped silently but counted; an image name on
    something that is not a regular file (a FIFO, a device, a socket: reading it would hang or never end) is a
    :class:`DatasetError` naming it.
    """
    if not os.path.isdir(folder):
        raise DatasetError(f"expected a folder of images at {folder}, but it does not exist")
    paths, ignored = [], 0
    with os.scandir(folder) as it:
        for entry in it:
            if is_image(entry.name) and not entry.is_dir():
                image_file(entry.path)
                paths.append(os.path.abspath(entry.path))
            elif entry.is_file():
                ignored += 1
    return sorted(paths), ignored


def image_file(path: str) -> str:
    """``path`` when it is a regular file, else the :class:`DatasetError` of
    :func:`~esreid.data.base.check_regular_file` (the scan accepts regular files only)."""
    check_regular_file(path)
    return path


def _has_all(folder: str, required: Sequence[str]) -> bool:
    return all(os.path.exists(os.path.join(folder, r)) for r in required)


def _find_below(root: str, required: Sequence[str], levels: int) -> Optional[str]:
    """The shallowest folder at most ``levels`` below ``root`` that holds every entry of ``required``."""
    frontier = [root]
    for _ in range(levels):
        nxt = []
        for folder in frontier:
            try:
                with os.scandir(folder) as it:
                    subdirs = sorted(e.path for e in it if e.is_dir() and not e.name.startswith("."))
            except OSError:
                continue
            for sub in subdirs:
                if _has_all(sub, required):
                    return sub
            nxt.extend(subdirs)
        frontier = nxt
    return None


def locate(title: str, root: str, candidates: Sequence[str], required: Sequence[str]) -> str:
    """The first ``root/<candidate>`` that holds every entry of ``required`` ("" = root itself).

    Raises a :class:`DatasetError` that says what is missing, where it looked, and, when the layout sits
    deeper below root (zip extracted one level too deep, wrong root), where it was found instead.
    """
    if not os.path.isdir(root):
        raise DatasetError(f"{title}: dataset root {root} does not exist (expected a folder holding {required[0]!r})")
    looked = [os.path.abspath(os.path.join(root, c)) for c in candidates]
    for folder in looked:
        if _has_all(folder, required):
            return folder
    existing = [f for f in looked if os.path.isdir(f)]
    partial = [(f, [r for r in required if not os.path.exists(os.path.join(f, r))]) for f in existing]
    partial = [(f, miss) for f, miss in partial if len(miss) < len(required)]
    if partial:
        folder, missing = partial[0]
        raise DatasetError(
            f"{title}: {folder} has only part of the expected layout: missing {', '.join(repr(m) for m in missing)} "
            f"(expected {', '.join(repr(r) for r in required)})"
        )
    msg = f"{title}: no {required[0]!r} under {root} (looked in {', '.join(looked)})"
    for start in existing or [root]:
        found = _find_below(start, required, _TOO_DEEP_LEVELS)
        if found is not None:
            rel = os.path.relpath(found, root)
            msg += f"; found {rel} - the zip was extracted one level too deep, or root should be {found}?"
            break
    raise DatasetError(msg)


def probe(root: str, candidates: Sequence[str], required: Sequence[str]) -> bool:
    """Whether anything that looks like this dataset is under ``root`` (a named candidate folder, or the layout)."""
    return any(c and os.path.isdir(os.path.join(root, c)) for c in candidates) or any(
        _has_all(os.path.join(root, c), required) for c in candidates
    )


def require_nonempty(title: str, split: str, items: Sequence[ImageItem], where: str) -> None:
    if not items:
        raise DatasetError(f"{title}: the {split} split is empty: no usable images in {where}")


def announce(dataset: ReIDDataset, verbose: bool) -> None:
    """Print the canonical summary table (and the number of skipped non-image files)."""
    if verbose:
        print(dataset.summary())


# --------------------------------------------------------------------------------------------------------------
# The one "<pid>_c<camera>..." parser (Market-1501, DukeMTMC-reID, VeRi-776)
# --------------------------------------------------------------------------------------------------------------
PID_CAM = re.compile(r"^(-?\d+)_c(\d+)")  # torchreid: ([-\d]+)_c(\d); \d+ also covers VeRi's c001..c020


def parse_pid_cam_folder(
    title: str, folder: str, num_cams: int, max_pid: int, example: str
) -> Tuple[List[ImageItem], int]:
    """Items of a folder of ``<pid>_c<cam>...`` images (camera 1-based in the name, 0-based in the item).

    pid -1 (Market junk) is dropped; pid 0 (Market distractors) is kept. Returns (items, skipped non-images).
    """
    paths, ignored = list_images(folder)
    items = []
    for path in paths:
        m = PID_CAM.match(os.path.basename(path))
        if m is None:
            raise DatasetError(
                f"{title}: cannot parse the file name {path}: expected '<pid>_c<camera>...' like {example}"
            )
        pid, cam = int(m.group(1)), int(m.group(2))
        if pid == -1:
            continue
        if not 0 <= pid <= max_pid or not 1 <= cam <= num_cams:
            raise DatasetError(
                f"{title}: {path}: pid {pid} / camera {cam} out of range "
                f"(expected pid 0..{max_pid}, camera 1..{num_cams})"
            )
        items.append(ImageItem(path, pid, cam - 1))
    return items, ignored


class PidCamFolderDataset(ReIDDataset):
    """Base of the datasets stored as train/query/gallery folders of ``<pid>_c<cam>...`` images.

    Subclasses set ``title`` (for messages), ``candidates`` (folders under root to try, "" = root), ``folders``
    (split -> folder name), ``num_cams``, ``max_pid`` and ``example`` (a valid file name).
    """

    title = ""
    candidates: Tuple[str, ...] = ()
    folders: Dict[str, str] = {}
    num_cams = 0
    max_pid = 0
    example = ""

    def __init__(self, root: str, verbose: bool = True, extra_gallery: str = ""):
        self.data_dir = locate(self.title, root, self.candidates, tuple(self.folders.values()))
        self.ignored_files = 0
        splits = {split: self._parse(folder) for split, folder in self.folders.items()}
        if extra_gallery:
            splits["gallery"] = splits["gallery"] + self._parse(extra_gallery)
        super().__init__(relabel(splits["train"]), splits["query"], splits["gallery"])
        announce(self, verbose)

    def _parse(self, folder: str) -> List[ImageItem]:
        path = os.path.join(self.data_dir, folder)
        if not os.path.isdir(path):
            raise DatasetError(f"{self.title}: expected the folder {folder!r} in {self.data_dir}, not found")
        items, ignored = parse_pid_cam_folder(self.title, path, self.num_cams, self.max_pid, self.example)
        self.ignored_files += ignored
        require_nonempty(self.title, folder, items, path)
        return items

    @classmethod
    def probe(cls, root: str) -> bool:
        return probe(root, cls.candidates, tuple(cls.folders.values()))
