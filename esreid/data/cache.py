"""Decoded-image cache: decode + resize a split once into a memory-mapped uint8 array, reused across epochs and runs.

Files in ``cache_dir`` for a list of items at a size (``key`` = hash of the item paths, the size and the format
version)::

    <key>.u8     raw uint8 array (N, 3, H, W), C order, memory-mapped read-only
    <key>.json   index: version, H, W, and per image its path, mtime (ns) and size (bytes)

The cache is rebuilt when any source file's mtime or size differs from the index (or a file vanished), when the
size changes (a different key), or when the array file is missing or has the wrong length. Both files are written
to temporary names and renamed; the index is removed first and renamed last, so an interrupted build never leaves
an index that vouches for a half-written array.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Sequence

import numpy as np
import torch

from esreid.data.base import DatasetError, ImageItem, ReIDDataset
from esreid.data.transforms import decode_resize

CACHE_VERSION = 1


def cache_key(paths: Sequence[str], height: int, width: int) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION} {height}x{width}\n".encode())
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()[:20]


def _stamps(paths: Sequence[str]) -> List[List[int]]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            raise DatasetError(f"image cache: source image {p} does not exist (expected a readable file)") from None
        out.append([st.st_mtime_ns, st.st_size])
    return out


class CacheSource:
    """Read-only view of a built cache: ``source[i]`` -> uint8 tensor ``(3, H, W)``.

    The memory map is opened lazily in each process (DataLoader workers re-open it instead of pickling the data).
    """

    def __init__(self, array_path: str, length: int, height: int, width: int):
        self.array_path, self.shape = array_path, (length, 3, height, width)
        self._array = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._array is None:
            self._array = np.memmap(self.array_path, dtype=np.uint8, mode="r", shape=self.shape)
        return torch.from_numpy(np.array(self._array[i]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


def _is_fresh(index_path: str, array_path: str, expected: dict) -> bool:
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError):
        return False
    n, h, w = len(expected["paths"]), expected["height"], expected["width"]
    return index == expected and os.path.isfile(array_path) and os.path.getsize(array_path) == n * 3 * h * w


def build_cache_source(items: Sequence[ImageItem], height: int, width: int, cache_dir: str) -> CacheSource:
    """The cache of ``items`` at ``(height, width)`` in ``cache_dir``, built (or rebuilt) if needed.

    Raises:
        DatasetError: a source image is missing or cannot be decoded (the message names it).
    """
    if not items:
        raise DatasetError(f"image cache: nothing to cache into {cache_dir} (the split is empty)")
    paths = [it.path for it in items]
    key = cache_key(paths, height, width)
    array_path, index_path = os.path.join(cache_dir, f"{key}.u8"), os.path.join(cache_dir, f"{key}.json")
    expected = {"version": CACHE_VERSION, "height": height, "width": width, "paths": paths, "stamps": _stamps(paths)}
    if not _is_fresh(index_path, array_path, expected):
        _build(paths, height, width, array_path, index_path, expected)
    return CacheSource(array_path, len(paths), height, width)


def _build(paths: Sequence[str], height: int, width: int, array_path: str, index_path: str, index: dict) -> None:
    os.makedirs(os.path.dirname(array_path) or ".", exist_ok=True)
    tmp_array, tmp_index = f"{array_path}.tmp{os.getpid()}", f"{index_path}.tmp{os.getpid()}"
    try:
        array = np.memmap(tmp_array, dtype=np.uint8, mode="w+", shape=(len(paths), 3, height, width))
        for i, path in enumerate(paths):
            array[i] = decode_resize(path, height, width).numpy()
        array.flush()
        del array
        with open(tmp_index, "w", encoding="utf-8") as f:
            json.dump(index, f)
        if os.path.exists(index_path):
            os.remove(index_path)
        os.replace(tmp_array, array_path)
        os.replace(tmp_index, index_path)
    finally:
        for tmp in (tmp_array, tmp_index):
            if os.path.exists(tmp):
                os.remove(tmp)


def build_cache(dataset: ReIDDataset, height: int, width: int, cache_dir: str) -> Dict[str, CacheSource]:
    """Build (or refresh) the caches of every non-empty split of ``dataset``; ``{split: source}``."""
    splits = {"train": dataset.train, "query": dataset.query, "gallery": dataset.gallery}
    return {s: build_cache_source(items, height, width, cache_dir) for s, items in splits.items() if items}
