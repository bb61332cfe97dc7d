"""Decoded-image cache: decode + resize a split once into a memory-mapped uint8 array, reused across epochs and runs.

Files in ``cache_dir`` for a list of items at a size (``key`` = hash of the item paths, the size and the format
version)::

    <key>.u8     raw uint8 array (N, 3, H, W), C order, memory-mapped read-only
    <key>.json   index: version, H, W, and per image its path, mtime (ns) and size (bytes)

The cache is rebuilt when any source file's mtime or size differs from the index (or a file vanished), when the
size changes (a different key), or when the array file is missing or has the wrong length. The array is built under
a temporary name (:func:`esreid.files.temp_path`) and renamed; the index is removed first and written last
(atomically), so an interrupted build never leaves an index that vouches for a half-written array. Temporary files of
killed builds are removed (:func:`esreid.files.remove_orphans`) before a cache is looked up.

Disk space: before decoding, the folder must be writable and hold the whole array (``N * 3 * H * W`` bytes), and the
array file's blocks are reserved at once (:func:`esreid.files.allocate_file`). Writing through a memory map
into a sparse file on a full disk kills the process with SIGBUS, no message; with the blocks reserved, a full disk
is a :class:`DatasetError` naming the folder and the bytes needed, raised before any decoding.

An image that cannot be decoded does not stop the build: its slot stays zero, the index records the error, and
reading that slot raises the same :class:`DatasetError` naming the file that decoding it would, so the training
loader's substitution rule (:mod:`esreid.data.loader`) applies with or without the cache. Repairing (or replacing)
the file changes its mtime / size, which rebuilds the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from esreid.console import progress
from esreid.data.base import DatasetError, ImageItem
from esreid.data.transforms import decode_resize
from esreid.files import (
    StorageError,
    allocate_file,
    atomic_write,
    check_writable,
    ensure_free_space,
    format_size,
    remove_orphans,
    reported,
    temp_path,
)

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

    def __init__(self, array_path: str, length: int, height: int, width: int, bad: Optional[Dict[int, str]] = None):
        self.array_path, self.shape = array_path, (length, 3, height, width)
        self.bad = dict(bad or {})  # index -> decoding error recorded at build time
        self._array = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        if i in self.bad:
            raise DatasetError(f"{self.bad[i]} (recorded when the image cache {self.array_path} was built)")
        if self._array is None:
            self._array = np.memmap(self.array_path, dtype=np.uint8, mode="r", shape=self.shape)
        return torch.from_numpy(np.array(self._array[i]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


def _fresh_bad(index_path: str, array_path: str, expected: dict) -> Optional[Dict[int, str]]:
    """The undecodable images ``{index: error}`` recorded by a fresh cache; None when the cache must be (re)built."""
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        bad = {int(i): str(msg) for i, msg in index.pop("bad").items()}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None
    n, h, w = len(expected["paths"]), expected["height"], expected["width"]
    fresh = index == expected and os.path.isfile(array_path) and os.path.getsize(array_path) == n * 3 * h * w
    return bad if fresh else None


def build_cache_source(items: Sequence[ImageItem], height: int, width: int, cache_dir: str) -> CacheSource:
    """The cache of ``items`` at ``(height, width)`` in ``cache_dir``, built (or rebuilt) if needed.

    Raises:
        DatasetError: a source image is missing (the message names it); or ``cache_dir`` cannot be written or lacks
            the space for the array (the message names the folder and the bytes needed). An image that exists but
            cannot be decoded raises only when its slot is read (module docstring).
    """
    if not items:
        raise DatasetError(f"image cache: nothing to cache into {cache_dir} (the split is empty)")
    paths = [it.path for it in items]
    key = cache_key(paths, height, width)
    array_path, index_path = os.path.join(cache_dir, f"{key}.u8"), os.path.join(cache_dir, f"{key}.json")
    expected = {"version": CACHE_VERSION, "height": height, "width": width, "paths": paths, "stamps": _stamps(paths)}
    remove_orphans(cache_dir)
    bad = _fresh_bad(index_path, array_path, expected)
    if bad is None:
        try:
            bad = _build(paths, height, width, array_path, index_path, expected)
        except StorageError as e:
            size = format_size(len(paths) * 3 * height * width)
            raise DatasetError(f"image cache of {len(paths)} images at {height}x{width} ({size}) in {cache_dir}: "
                               f"{e} (data.cache_dir sets the cache folder; data.cache: false decodes the images on "
                               "the fly instead)") from None
    return CacheSource(array_path, len(paths), height, width, bad)


def _build(paths: Sequence[str], height: int, width: int, array_path: str, index_path: str,
           index: dict) -> Dict[int, str]:
    """Decode every image into the array; returns ``{index: error}`` of the undecodable ones (slots left zero).

    Raises:
        StorageError: the folder cannot be written or the disk cannot hold the array (checked before decoding).
    """
    cache_dir = os.path.dirname(array_path) or "."
    shape = (len(paths), 3, height, width)
    nbytes = int(np.prod(shape))
    check_writable(cache_dir, "image cache folder")
    ensure_free_space(cache_dir, nbytes, "the image cache")
    tmp_array = temp_path(array_path)
    bad: Dict[int, str] = {}
    try:
        allocate_file(tmp_array, nbytes)
        with reported(array_path):
            array = np.memmap(tmp_array, dtype=np.uint8, mode="r+", shape=shape)
            for i, path in progress(enumerate(paths), f"caching {height}x{width}", total=len(paths), unit="img"):
                try:
                    array[i] = decode_resize(path, height, width).numpy()
                except DatasetError as e:
                    bad[i] = str(e)
            array.flush()
            del array
            with contextlib.suppress(FileNotFoundError):  # another process (DDP rank) may be replacing it too
                os.remove(index_path)
            os.replace(tmp_array, array_path)
        atomic_write(index_path, json.dumps({**index, "bad": {str(i): msg for i, msg in bad.items()}}))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_array)
    return bad
