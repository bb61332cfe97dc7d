"""Loaders on real temporary JPEGs: the batch contract, PK batches, bad-image substitution and its limits."""

import logging
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from esreid.config import DataConfig
from esreid.data.base import DatasetError, ImageItem
from esreid.data.loader import (
    FileImageSource,
    ReIDImageDataset,
    build_image_source,
    build_test_loader,
    build_train_loader,
)

H, W = 16, 8
NUM_IDS, PER_ID = 4, 3


def colour(index):
    """A distinct flat colour per image, so a decoded image tells which file it came from."""
    return (40 + 50 * (index % 4), 30 + 60 * (index // 4 % 4), 200 - 15 * index)


def identify(image):
    mean = image.float().mean(dim=(1, 2))
    dists = [float((mean - torch.tensor(colour(i), dtype=torch.float32)).abs().max()) for i in range(NUM_IDS * PER_ID)]
    return int(np.argmin(dists))


@pytest.fixture
def items(tmp_path):
    out = []
    for i in range(NUM_IDS * PER_ID):
        pid = i // PER_ID
        path = tmp_path / f"{pid:04d}_c{i % 2 + 1}s1_{i:06d}_01.jpg"
        Image.new("RGB", (W * 2, H * 2), colour(i)).save(path, quality=95)
        out.append(ImageItem(str(path), pid, i % 2))
    return out


def corrupt(item):
    with open(item.path, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.truncate()
        f.write(data[: len(data) // 3])


def cfg(**kw):
    base = dict(height=H, width=W, ids_per_batch=2, instances=2, workers=0, test_batch_size=5)
    base.update(kw)
    return DataConfig(**base)


def test_file_source_and_item_dict(items):
    source = FileImageSource(items, H, W)
    ds = ReIDImageDataset(items, source)
    sample = ds[4]
    assert set(sample) == {"images", "pids", "camids", "index"}
    assert sample["images"].dtype == torch.uint8 and sample["images"].shape == (3, H, W)
    assert (sample["pids"], sample["camids"], sample["index"]) == (items[4].pid, items[4].camid, 4)
    assert identify(sample["images"]) == 4


def test_train_loader_batch_contract(items):
    loader = build_train_loader(cfg(), items, seed=0)
    loader.batch_sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == len(loader) == NUM_IDS // 2
    for b in batches:
        assert b["images"].dtype == torch.uint8 and b["images"].shape == (4, 3, H, W)
        for key in ("pids", "camids", "index"):
            assert b[key].dtype == torch.int64 and b[key].shape == (4,)
        for img, pid, cam, idx in zip(b["images"], b["pids"], b["camids"], b["index"]):
            assert (items[idx].pid, items[idx].camid) == (int(pid), int(cam))
            assert identify(img) == int(idx)
        assert sorted(torch.bincount(b["pids"]).tolist(), reverse=True)[:2] == [2, 2]


def test_corrupt_training_image_is_substituted_and_counted(items, caplog):
    corrupt(items[4])  # identity 1 = items 3, 4, 5
    ds = ReIDImageDataset(items, FileImageSource(items, H, W), substitute_bad=True)
    with caplog.at_level(logging.WARNING, logger="esreid.data.loader"):
        sample = ds[4]
    assert identify(sample["images"]) == 5  # the next image of the same identity
    assert sample["pids"] == 1 and sample["index"] == 4
    assert items[4].path in caplog.text
    assert ds.bad_files() == [items[4].path] and int(ds.substitutions) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="esreid.data.loader"):
        ds[4]
    assert caplog.text == "" and int(ds.substitutions) == 2  # warned once, counted every time


def test_identity_without_readable_image_raises(items):
    for it in items[3:6]:
        corrupt(it)
    ds = ReIDImageDataset(items, FileImageSource(items, H, W), substitute_bad=True)
    with pytest.raises(DatasetError, match="no readable image left for identity 1"):
        ds[3]


def test_too_many_bad_images_raise(items):
    corrupt(items[0])
    corrupt(items[4])
    ds = ReIDImageDataset(items, FileImageSource(items, H, W), substitute_bad=True, max_bad=1)
    ds[0]
    with pytest.raises(DatasetError, match="2 training images are unreadable"):
        ds[4]


def test_test_loader_keeps_order_and_never_substitutes(items):
    loader = build_test_loader(cfg(), items)
    batches = list(loader)
    assert [len(b["index"]) for b in batches] == [5, 5, 2]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(len(items)))
    corrupt(items[7])
    with pytest.raises(DatasetError, match=items[7].path):
        list(build_test_loader(cfg(), items))


def test_workers_share_bad_marks(items):
    corrupt(items[1])
    loader = build_train_loader(cfg(workers=1), items, seed=0)
    assert loader.persistent_workers
    for epoch in range(6):
        loader.batch_sampler.set_epoch(epoch)
        for b in loader:
            assert b["images"].shape == (4, 3, H, W)
    assert loader.dataset.bad_files() == [items[1].path]  # marked in the worker, visible here
    assert int(loader.dataset.substitutions) >= 1


def test_cache_source_is_used_when_configured(items, monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("esreid.data.cache")

    def build_cache_source(its, height, width, cache_dir):
        calls.append((len(its), height, width, cache_dir))
        return FileImageSource(its, height, width)

    fake.build_cache_source = build_cache_source
    monkeypatch.setitem(sys.modules, "esreid.data.cache", fake)
    build_image_source(cfg(cache=True, root=str(tmp_path)), items)
    build_image_source(cfg(cache=True, cache_dir="/somewhere"), items)
    assert calls == [(len(items), H, W, str(tmp_path / ".esreid_cache")), (len(items), H, W, "/somewhere")]
    assert isinstance(build_image_source(cfg(), items), FileImageSource)


def test_cached_batches_equal_file_batches(items, tmp_path):
    pytest.importorskip("esreid.data.cache")
    files = build_train_loader(cfg(), items, seed=3)
    cached = build_train_loader(cfg(cache=True, cache_dir=str(tmp_path / "cache")), items, seed=3)
    for a, b in zip(files, cached):
        for key in ("images", "pids", "camids", "index"):
            assert torch.equal(a[key], b[key])


def test_cached_train_loader_substitutes_a_corrupt_image(items, tmp_path):
    corrupt(items[4])  # identity 1
    loader = build_train_loader(cfg(cache=True, cache_dir=str(tmp_path / "cache")), items, seed=0)
    seen = set()
    for b in loader:
        for img, idx in zip(b["images"], b["index"].tolist()):
            got = identify(img)
            assert items[got].pid == items[idx].pid and got != 4
            seen.add(idx)
    assert 4 in seen and loader.dataset.bad_files() == [items[4].path]
    with pytest.raises(DatasetError, match=items[4].path):
        list(build_test_loader(cfg(cache=True, cache_dir=str(tmp_path / "cache")), items))
