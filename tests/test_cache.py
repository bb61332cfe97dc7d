"""Decoded-image cache: contents equal direct decoding, reuse, invalidation, atomic builds, pickling, disk space."""

import errno
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import esreid.data.cache as cache
import esreid.files as files
from esreid.data.base import DatasetError, ImageItem
from esreid.data.transforms import decode_resize


def make_items(folder, n=4):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        path = os.path.join(folder, f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (10 + i, 6, 3), dtype=np.uint8)).save(path)
        items.append(ImageItem(path, i % 2, i))
    return items


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []

    def counting(path, height, width):
        calls.append(path)
        return decode_resize(path, height, width)

    monkeypatch.setattr(cache, "decode_resize", counting)
    return calls


def test_cache_matches_decoding_and_is_reused(tmp_path, count_decodes):
    items = make_items(str(tmp_path / "img"))
    src = cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))
    assert len(src) == 4 and len(count_decodes) == 4
    for i, it in enumerate(items):
        got = src[i]
        assert got.dtype == torch.uint8 and got.shape == (3, 8, 4)
        assert torch.equal(got, decode_resize(it.path, 8, 4))
    assert sorted(os.listdir(tmp_path / "c")) == sorted(
        [f"{cache.cache_key([it.path for it in items], 8, 4)}.{ext}" for ext in ("u8", "json")])
    again = cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))
    assert len(count_decodes) == 4 and torch.equal(again[3], src[3])
    # a new size is a new cache
    assert cache.build_cache_source(items, 6, 4, str(tmp_path / "c"))[0].shape == (3, 6, 4)
    assert len(count_decodes) == 8


def test_cache_rebuilt_when_a_source_changes(tmp_path, count_decodes):
    items = make_items(str(tmp_path / "img"))
    cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))
    Image.new("RGB", (6, 12), (255, 0, 0)).save(items[2].path)
    os.utime(items[2].path, ns=(1, 1))  # even an older mtime counts as a change
    src = cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))
    assert len(count_decodes) == 8
    assert torch.equal(src[2][0], torch.full((8, 4), 255, dtype=torch.uint8))
    os.remove(items[1].path)
    with pytest.raises(DatasetError, match=f"source image {items[1].path} does not exist"):
        cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    items = make_items(str(tmp_path / "img"))

    def interrupted(path, height, width):
        if path == items[3].path:  # killed late in the split
            raise KeyboardInterrupt
        return decode_resize(path, height, width)

    monkeypatch.setattr(cache, "decode_resize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))
    assert os.listdir(tmp_path / "c") == []


def test_corrupt_image_raises_on_read_not_on_build(tmp_path, count_decodes):
    items = make_items(str(tmp_path / "img"))
    good = decode_resize(items[0].path, 8, 4)
    with open(items[3].path, "r+b") as f:  # truncate: a corrupt image late in the split
        f.truncate(20)
    src = cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))
    assert torch.equal(src[0], good)
    with pytest.raises(DatasetError, match=items[3].path):
        src[3]
    # reused as it is (no new decoding), still knows the bad image, also after pickling (loader workers)
    again = pickle.loads(pickle.dumps(cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))))
    assert len(count_decodes) == 4
    with pytest.raises(DatasetError, match=items[3].path):
        again[3]
    # repairing the file rebuilds the cache
    Image.new("RGB", (6, 12), (0, 255, 0)).save(items[3].path)
    fixed = cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))
    assert len(count_decodes) == 8 and torch.equal(fixed[3][1], torch.full((8, 4), 255, dtype=torch.uint8))


def test_truncated_array_is_rebuilt_and_source_pickles(tmp_path, count_decodes):
    items = make_items(str(tmp_path / "img"))
    src = cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))
    expected = src[1].clone()
    with open(src.array_path, "r+b") as f:
        f.truncate(10)
    src = cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))
    assert len(count_decodes) == 8
    clone = pickle.loads(pickle.dumps(src))
    assert clone._array is None and torch.equal(clone[1], expected)
    with pytest.raises(DatasetError, match="split is empty"):
        cache.build_cache_source([], 8, 4, str(tmp_path / "c"))


def test_full_disk_is_an_error_before_decoding(tmp_path, monkeypatch, count_decodes):
    items = make_items(str(tmp_path / "img"))
    folder = str(tmp_path / "c")
    need = 4 * 3 * 8 * 4
    usage = type(files.shutil.disk_usage(tmp_path))(total=10**9, used=10**9 - need + 1, free=need - 1)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: usage)
    with pytest.raises(DatasetError, match=f"image cache of 4 images at 8x4 \\({need} bytes\\) in {folder}: not enough "
                                           f"free space in {folder} for the image cache: needs {need} bytes, "
                                           f"{need - 1} bytes free.*data.cache_dir"):
        cache.build_cache_source(items, 8, 4, folder)
    assert count_decodes == [] and os.listdir(folder) == []


def test_disk_filling_up_while_reserving_is_an_error_not_sigbus(tmp_path, monkeypatch, count_decodes):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "posix_fallocate", full)
    items = make_items(str(tmp_path / "img"))
    with pytest.raises(DatasetError, match=rf"image cache of 4 images at 8x4 \(384 bytes\) in {tmp_path / 'c'}: "
                                           rf"cannot write {tmp_path / 'c'}/\..*u8.*: No space left on device"):
        cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))
    assert count_decodes == [] and os.listdir(tmp_path / "c") == []


def test_array_blocks_are_reserved_before_decoding(tmp_path, monkeypatch):
    """Writing a sparse memory-mapped file on a full disk kills the process (SIGBUS): every block must be allocated
    before the first image is written into it."""
    items = make_items(str(tmp_path / "img"))
    seen = []

    def checking(path, height, width):
        if not seen:
            (tmp,) = [os.path.join(tmp_path / "c", n) for n in os.listdir(tmp_path / "c")]
            st = os.stat(tmp)
            seen.append((st.st_size, st.st_blocks * 512))
        return decode_resize(path, height, width)

    monkeypatch.setattr(cache, "decode_resize", checking)
    cache.build_cache_source(items, 64, 32, str(tmp_path / "c"))
    size, allocated = seen[0]
    assert size == 4 * 3 * 64 * 32 and allocated >= size


def test_read_only_cache_folder(tmp_path, monkeypatch, storage):
    items = make_items(str(tmp_path / "img"))
    (tmp_path / "c").mkdir()
    storage.simulate_read_only(monkeypatch)
    with pytest.raises(DatasetError, match=f"image cache folder {tmp_path / 'c'} is not writable "
                                           r"\(Read-only file system\)"):
        cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))


def test_orphans_of_killed_builds_are_removed(tmp_path, storage):
    items = make_items(str(tmp_path / "img"))
    folder = tmp_path / "c"
    folder.mkdir()
    key, host, dead = cache.cache_key([it.path for it in items], 8, 4), files._host(), storage.dead_pid()
    orphans = [f".{key}.u8.{host}.{dead}.0a1b2c3d.esreid-tmp", f"{key}.u8.tmp{dead}", f"{key}.json.tmp{dead}"]
    live = f".{key}.u8.{host}.{os.getppid()}.0a1b2c3d.esreid-tmp"  # another process building it now
    for name in orphans + [live]:
        (folder / name).write_bytes(b"\0" * 100)
    cache.build_cache_source(items, 8, 4, str(folder))
    assert sorted(os.listdir(folder)) == sorted([f"{key}.u8", f"{key}.json", live])


def test_flipped_byte_in_the_array_is_found_and_rebuilt(tmp_path, count_decodes, caplog):
    """Today a flipped byte in <key>.u8 is served as pixels without a word; every slot's CRC-32 is checked when the
    cache is opened and a cache whose bytes changed is rebuilt, with a warning naming it."""
    items = make_items(str(tmp_path / "img"))
    cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))
    array_path = os.path.join(tmp_path, "c", cache.cache_key([it.path for it in items], 8, 4) + ".u8")
    raw = bytearray(open(array_path, "rb").read())
    raw[2 * 3 * 8 * 4 + 5] ^= 0x40  # slot 2
    open(array_path, "wb").write(raw)
    with caplog.at_level("WARNING", logger="esreid.data.cache"):
        src = cache.build_cache_source(items, 8, 4, str(tmp_path / "c"))
    assert len(count_decodes) == 8  # rebuilt
    assert all(torch.equal(src[i], decode_resize(it.path, 8, 4)) for i, it in enumerate(items))
    assert f"image cache {array_path}: 1 of 4 slots fail their checksum (first: slot 2, {items[2].path})" in caplog.text
    assert cache.build_cache_source(items, 8, 4, str(tmp_path / "c")) and len(count_decodes) == 8  # fresh again
    open(array_path, "r+b").write(b"\x01")  # slot 0 now
    assert cache.corrupt_slots(array_path, (4, 3, 8, 4), json_crc(array_path)) == [0]


def json_crc(array_path):
    import json

    with open(array_path[: -len(".u8")] + ".json", encoding="utf-8") as f:
        return json.load(f)["crc"]
