"""Decoded-image cache: decode + resize a split once into a memory-mapped uint8 array, reused across epochs and runs.

Files in ``cache_dir`` for a list of items at a size (``key`` = hash of the item paths, the size and the format
version)::

    <key>.u8     raw uint8 array (N, 3, H, W), C order, memory-mapped read-only
    <key>.json   index: version, H, W, and per image its path, mtime (ns), size (bytes) and the CRC-32 of its slot

The cache is rebuilt when any source file's mtime or size differs from the index (or a file vanished), when the
size changes (a different key), when the array file is missing or has the wrong length, or when a slot's bytes no
longer match their CRC-32 (a disk or copy error after the build: every slot is checked when the cache is opened, at
about 1 GB/s, e.g. 1.1 s for Market-1501's 12,936 training images at 256x128; README "When things go wrong"). The
array is built under a temporary name (:func:`esreid.files.temp_path`) and renamed; the index is removed first and
written last (atomically), so an interrupted build never leaves an index that vouches for a half-written array.
Temporary files of killed builds are removed (:func:`esreid.files.remove_orphans`) before a cache is looked up.

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
import logging
import os
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

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

CACHE_VERSION = 2  # 2: per-slot CRC-32 in the index
CHECK_CHUNK = 256  # slots read per step when the checksums are verified
logger = logging.getLogger(__name__)


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


def _fresh_index(index_path: str, array_path: str, expected: dict) -> Optional[Tuple[Dict[int, str], List[int]]]:
    """``(undecodable images {index: error}, slot CRC-32s)`` of a fresh cache; None when it must be (re)built."""
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        bad = {int(i): str(msg) for i, msg in index.pop("bad").items()}
        crc = [int(c) for c in index.pop("crc")]
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None
    n, h, w = len(expected["paths"]), expected["height"], expected["width"]
    fresh = index == expected and len(crc) == n and os.path.isfile(array_path) and \
        os.path.getsize(array_path) == n * 3 * h * w
    return (bad, crc) if fresh else None


def corrupt_slots(array_path: str, shape: Tuple[int, int, int, int], crc: Sequence[int]) -> List[int]:
    """Slots of the array whose bytes differ from their CRC-32 (read :data:`CHECK_CHUNK` slots at a time)."""
    array = np.memmap(array_path, dtype=np.uint8, mode="r", shape=shape)
    try:
        wrong = []
        for s in range(0, shape[0], CHECK_CHUNK):
            block = np.asarray(array[s: s + CHECK_CHUNK])
            wrong += [s + i for i, slot in enumerate(block) if zlib.crc32(slot) != crc[s + i]]
        return wrong
    finally:
        del array


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
    fresh = _fresh_index(index_path, array_path, expected)
    bad = None
    if fresh is not None:
        bad, crc = fresh
        wrong = corrupt_slots(array_path, (len(paths), 3, height, width), crc)
        if wrong:
            logger.warning("image cache %s: %d of %d slots fail their checksum (first: slot %d, %s): its bytes changed "
                           "after it was built (a disk or copy error); rebuilding it", array_path, len(wrong),
                           len(paths), wrong[0], paths[wrong[0]])
            bad = None
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
    crc: List[int] = []
    try:
        allocate_file(tmp_array, nbytes)
        with reported(array_path):
            array = np.memmap(tmp_array, dtype=np.uint8, mode="r+", shape=shape)
            for i, path in progress(enumerate(paths), f"caching {height}x{width}", total=len(paths), unit="img"):
                try:
                    array[i] = decode_resize(path, height, width).numpy()
                except DatasetError as e:
                    bad[i] = str(e)
                crc.append(zlib.crc32(np.asarray(array[i])))
            array.flush()
            del array
            with contextlib.suppress(FileNotFoundError):  # another process (DDP rank) may be replacing it too
                os.remove(index_path)
            os.replace(tmp_array, array_path)
        atomic_write(index_path, json.dumps({**index, "bad": {str(i): msg for i, msg in bad.items()}, "crc": crc}))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_array)
    return bad
