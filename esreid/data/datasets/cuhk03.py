"""CUHK03 (Li et al., CVPR 2014) with the new 767/700 protocol (Zhong et al., CVPR 2017), detected or labeled.

Layout under ``root`` (torchreid / fast-reid names; ``cuhk03/`` or root itself)::

    cuhk03/cuhk03_release/cuhk-03.mat                      the release: cells of images per camera pair
    cuhk03/cuhk03_new_protocol_config_{detected,labeled}.mat   train_idx, query_idx, gallery_idx, labels, filelist
    cuhk03/images_{detected,labeled}/                      written once from the release by this loader

The split is read from the config ``.mat`` on every load (it is small), so no split file with stored paths is
written; the only thing generated is the image folder, named ``<campair>_<pid:03d>_<view>_<img:02d>.png`` exactly as
the config's ``filelist`` names them. camid = view - 1 (0/1), not the camera pair (the torchreid / fast-reid
loaders). Train pids are relabelled; query / gallery keep the config's ``labels``.

The real ``cuhk-03.mat`` is MATLAB v7.3 (HDF5), which scipy cannot read: it is read with h5py when that is
installed (an optional dependency; this path follows torchreid's reading of the file and is not exercised by the
tests here, which have no h5py), otherwise a clear error says so. Older-format (v5) files, like the miniature in the
tests, are read with scipy.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import scipy.io
from PIL import Image

from esreid.data.base import DATASETS, DatasetError, ImageItem, ReIDDataset, relabel
from esreid.data.datasets._common import announce, locate, require_nonempty

_NAME = re.compile(r"^\d+_\d{3}_([12])_\d{2}\.png$")
_SPLIT_KEYS = ("train_idx", "query_idx", "gallery_idx", "labels", "filelist")


def image_name(campair: int, pid: int, img: int) -> str:
    """Name of image ``img`` (0..9) of identity ``pid`` in camera pair ``campair`` (all 0-based); views 1 = 0..4."""
    return f"{campair + 1}_{pid + 1:03d}_{1 if img < 5 else 2}_{img + 1:02d}.png"


def _grid_images(grid: np.ndarray, load) -> Iterator[Tuple[int, int, np.ndarray]]:
    for pid in range(grid.shape[0]):
        for img in range(grid.shape[1]):
            arr = np.asarray(load(grid[pid, img]))
            if arr.ndim == 3 and arr.size:  # empty cells = missing images
                yield pid, img, arr


def read_release(mat_path: str, kind: str) -> Iterator[Tuple[int, int, int, np.ndarray]]:
    """(campair, pid, img, HxWx3 uint8 image) for every image of ``kind`` ("detected"/"labeled") in the release."""
    if scipy.io.matlab.matfile_version(mat_path)[0] == 2:
        yield from _read_release_hdf5(mat_path, kind)
        return
    mat = scipy.io.loadmat(mat_path)
    if kind not in mat:
        raise DatasetError(f"CUHK03: {mat_path} has no {kind!r} variable (expected cells of images per camera pair)")
    for campair, grid in enumerate(np.asarray(mat[kind]).ravel()):
        for pid, img, arr in _grid_images(np.asarray(grid), lambda cell: cell):
            yield campair, pid, img, arr


def _read_release_hdf5(mat_path: str, kind: str) -> Iterator[Tuple[int, int, int, np.ndarray]]:
    try:
        import h5py
    except ImportError:
        raise DatasetError(
            f"CUHK03: {mat_path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; install h5py "
            "(pip install h5py) so the images can be extracted once"
        ) from None
    with h5py.File(mat_path, "r") as f:
        if kind not in f:
            raise DatasetError(f"CUHK03: {mat_path} has no {kind!r} variable (expected cells of images)")
        for campair, ref in enumerate(np.asarray(f[kind]).ravel()):
            grid = np.asarray(f[ref]).T  # MATLAB stores arrays transposed
            for pid, img, arr in _grid_images(grid, lambda r: np.asarray(f[r]).T):
                yield campair, pid, img, arr


def extract_images(mat_path: str, kind: str, image_dir: str) -> None:
    """Write the release's images once into ``image_dir``, atomically (a temp folder renamed when complete).

    Several processes (DDP ranks) may extract at once: the first rename wins and the others keep its folder.
    """
    if not os.path.isfile(mat_path):
        raise DatasetError(
            f"CUHK03: neither the extracted images {image_dir}/ nor the release {mat_path} to extract them from exist"
        )
    tmp = f"{image_dir}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        for campair, pid, img, arr in read_release(mat_path, kind):
            image = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
            image.save(os.path.join(tmp, image_name(campair, pid, img)))
        try:
            os.replace(tmp, image_dir)
        except OSError:
            if not os.path.isdir(image_dir):  # not "another process renamed its complete folder first"
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_split(config_path: str, image_dir: str) -> Tuple[List[ImageItem], List[ImageItem], List[ImageItem]]:
    """(train, query, gallery) of a new-protocol config (1-based indices into ``filelist`` / ``labels``)."""
    cfg = scipy.io.loadmat(config_path)
    missing = [k for k in _SPLIT_KEYS if k not in cfg]
    if missing:
        raise DatasetError(f"CUHK03: {config_path} lacks the keys {missing} (expected {', '.join(_SPLIT_KEYS)})")
    names = [str(np.asarray(x).ravel()[0]) for x in np.asarray(cfg["filelist"]).ravel()]
    labels = np.asarray(cfg["labels"]).ravel().astype(np.int64)
    if len(names) != len(labels):
        raise DatasetError(f"CUHK03: {config_path}: filelist has {len(names)} entries but labels has {len(labels)}")
    splits = []
    for key in _SPLIT_KEYS[:3]:
        idx = np.asarray(cfg[key]).ravel().astype(np.int64) - 1
        if idx.size and (idx.min() < 0 or idx.max() >= len(names)):
            raise DatasetError(f"CUHK03: {config_path}: {key} holds indices outside 1..{len(names)}")
        items = []
        for i in idx:
            m = _NAME.match(names[i])
            if m is None:
                raise DatasetError(
                    f"CUHK03: {config_path}: filelist entry {names[i]!r} is not '<campair>_<pid>_<view>_<img>.png'"
                )
            path = os.path.join(image_dir, names[i])
            if not os.path.isfile(path):
                raise DatasetError(
                    f"CUHK03: {path} is listed in {config_path} but missing from {image_dir} (delete the folder to "
                    "extract it again from the release)"
                )
            items.append(ImageItem(path, int(labels[i]), int(m.group(1)) - 1))
        require_nonempty("CUHK03", key[: -len("_idx")], items, config_path)
        splits.append(items)
    return splits[0], splits[1], splits[2]


@DATASETS.register("cuhk03")
class CUHK03(ReIDDataset):
    name = "cuhk03"
    title = "CUHK03"
    candidates = ("cuhk03", "")
    # CUHK03-NP (Zhong et al., CVPR 2017, the split torchreid and fast-reid load from the same .mat files): 767 / 700
    # ids; labeled 7,368 / 1,400 / 5,328 images, detected 7,365 / 1,400 / 5,332. Settled: these are the published
    # counts; `esreid datasets check` reports any release that differs instead of trusting it.
    published_by_kind = {
        "labeled": {"train": (767, 7368), "query": (700, 1400), "gallery": (700, 5328)},
        "detected": {"train": (767, 7365), "query": (700, 1400), "gallery": (700, 5332)},
    }

    def __init__(self, root: str, labeled: bool = False, sgs: bool = False, verbose: bool = True):
        kind = "labeled" if labeled else "detected"  # detected by default, as torchreid and AGW
        config = f"cuhk03_new_protocol_config_{kind}.mat"
        self.data_dir = locate(f"{self.title} ({kind})", root, self.candidates, (config,))
        image_dir = os.path.join(self.data_dir, f"images_{kind}")
        if not os.path.isdir(image_dir):
            extract_images(os.path.join(self.data_dir, "cuhk03_release", "cuhk-03.mat"), kind, image_dir)
        train, query, gallery = read_split(os.path.join(self.data_dir, config), image_dir)
        self.protocol = self.protocol_name({"sgs": sgs})
        self.published = self.published_by_kind[kind]
        self.ignored_files = 0
        super().__init__(relabel(train), query, gallery)
        announce(self, verbose)

    @classmethod
    def protocol_name(cls, options: Dict[str, Any]) -> str:
        return "cuhk03_sgs" if options.get("sgs") else "market"

    @classmethod
    def probe(cls, root: str) -> bool:
        return any(
            os.path.isdir(os.path.join(root, "cuhk03"))
            or os.path.isfile(os.path.join(root, f"cuhk03_new_protocol_config_{k}.mat"))
            for k in ("detected", "labeled")
        )
