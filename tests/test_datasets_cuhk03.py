"""CUHK03 new protocol from a miniature release .mat and split .mat written with scipy (v5 format)."""

import importlib.util
import itertools
import os

import numpy as np
import pytest
import scipy.io
from PIL import Image

from esreid.data.base import DatasetError, build_dataset
from esreid.data.datasets.cuhk03 import image_name

N_IDS, H, W = 3, 6, 4


def release_cells(seed):
    """One camera pair holding N_IDS identities x 10 slots; slot 9 is empty (a missing image)."""
    rng = np.random.default_rng(seed)
    grid = np.empty((N_IDS, 10), dtype=object)
    for pid in range(N_IDS):
        for img in range(10):
            grid[pid, img] = np.zeros((0, 0), np.uint8) if img == 9 else rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    cells = np.empty((2, 1), dtype=object)  # two camera pairs
    cells[0, 0], cells[1, 0] = grid, grid
    return cells


def make_cuhk03(root):
    base = os.path.join(root, "cuhk03")
    os.makedirs(os.path.join(base, "cuhk03_release"))
    scipy.io.savemat(os.path.join(base, "cuhk03_release", "cuhk-03.mat"),
                     {"detected": release_cells(0), "labeled": release_cells(1)})
    names = ["1_001_1_01.png", "1_001_2_06.png", "1_002_1_02.png", "2_003_2_07.png", "2_003_1_01.png", "1_003_2_10.png"]
    filelist = np.empty((len(names), 1), dtype=object)
    filelist[:, 0] = names
    for kind in ("detected", "labeled"):
        scipy.io.savemat(os.path.join(base, f"cuhk03_new_protocol_config_{kind}.mat"), {
            "filelist": filelist, "labels": np.array([[1], [1], [2], [9], [9], [3]]),
            "camId": np.array([[1], [2], [1], [2], [1], [2]]),
            "train_idx": np.array([[1], [2], [3]]), "query_idx": np.array([[4]]), "gallery_idx": np.array([[5]]),
        })
    return base


def test_cuhk03_extracts_once_and_parses(tmp_path):
    base = make_cuhk03(str(tmp_path))
    ds = build_dataset("cuhk03", str(tmp_path), verbose=False)
    extracted = sorted(os.listdir(os.path.join(base, "images_detected")))
    assert len(extracted) == 2 * N_IDS * 9 and "1_003_2_10.png" not in extracted
    assert [(os.path.basename(it.path), it.pid, it.camid) for it in ds.train] == [
        ("1_001_1_01.png", 0, 0), ("1_001_2_06.png", 0, 1), ("1_002_1_02.png", 1, 0)]
    assert [(os.path.basename(it.path), it.pid, it.camid) for it in ds.query] == [("2_003_2_07.png", 9, 1)]
    assert [(it.pid, it.camid) for it in ds.gallery] == [(9, 0)]
    # the extracted pixels are the release's (PNG is lossless): pair 2, pid 3, image 7 = grid[2, 6]
    got = np.asarray(Image.open(ds.query[0].path))
    assert np.array_equal(got, release_cells(0)[1, 0][2, 6])
    assert ds.protocol == "market" and ds.published["gallery"] == (700, 5332)
    # a second load reuses the folder (no release needed any more)
    os.remove(os.path.join(base, "cuhk03_release", "cuhk-03.mat"))
    assert build_dataset("cuhk03", str(tmp_path), verbose=False).train == ds.train


def test_cuhk03_concurrent_extraction(tmp_path, monkeypatch):
    """Another process (DDP rank) finishes extracting while this one is still writing: its folder is kept."""
    import esreid.data.datasets.cuhk03 as cuhk03

    base = make_cuhk03(str(tmp_path))
    read_release = cuhk03.read_release

    others = [1]

    def other_rank_finishes_first(mat_path, kind):
        for n, item in enumerate(read_release(mat_path, kind)):
            if n == 1 and others:
                others.pop()
                cuhk03.extract_images(mat_path, kind, os.path.join(base, f"images_{kind}"))
            yield item

    monkeypatch.setattr(cuhk03, "read_release", other_rank_finishes_first)
    monkeypatch.setattr(cuhk03.os, "getpid", itertools.count(10**7).__next__)  # distinct temp folders
    ds = build_dataset("cuhk03", str(tmp_path), verbose=False)
    assert len(os.listdir(os.path.join(base, "images_detected"))) == 2 * N_IDS * 9
    assert [it.path for it in ds.train] == [os.path.join(base, "images_detected", n)
                                            for n in ("1_001_1_01.png", "1_001_2_06.png", "1_002_1_02.png")]
    assert not [n for n in os.listdir(base) if ".tmp" in n]


def test_cuhk03_labeled_and_sgs(tmp_path):
    base = make_cuhk03(str(tmp_path))
    ds = build_dataset("cuhk03", str(tmp_path), labeled=True, sgs=True, verbose=False)
    assert ds.protocol == "cuhk03_sgs" and ds.published["train"] == (767, 7368)
    assert os.path.dirname(ds.train[0].path) == os.path.join(base, "images_labeled")
    assert np.array_equal(np.asarray(Image.open(ds.train[0].path)), release_cells(1)[0, 0][0, 0])


def test_image_name():
    assert image_name(0, 0, 0) == "1_001_1_01.png" and image_name(4, 122, 9) == "5_123_2_10.png"


def test_cuhk03_errors(tmp_path):
    base = make_cuhk03(str(tmp_path))
    # the filelist names an image that the release does not have (empty slot)
    cfg = os.path.join(base, "cuhk03_new_protocol_config_detected.mat")
    mat = scipy.io.loadmat(cfg)
    mat["gallery_idx"] = np.array([[6]])
    scipy.io.savemat(cfg, {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(DatasetError, match=r"images_detected/1_003_2_10.png is listed in .* but missing"):
        build_dataset("cuhk03", str(tmp_path), verbose=False)
    mat["gallery_idx"] = np.array([[7]])
    scipy.io.savemat(cfg, {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(DatasetError, match=r"gallery_idx holds indices outside 1..6"):
        build_dataset("cuhk03", str(tmp_path), verbose=False)
    with pytest.raises(DatasetError, match="neither the extracted images .*images_labeled/ nor the release"):
        os.remove(os.path.join(base, "cuhk03_release", "cuhk-03.mat"))
        build_dataset("cuhk03", str(tmp_path), labeled=True, verbose=False)


def test_cuhk03_v73_without_h5py(tmp_path):
    if importlib.util.find_spec("h5py") is not None:
        pytest.skip("h5py is installed; this error is for its absence")
    base = make_cuhk03(str(tmp_path))
    # a v7.3 file: 128-byte MATLAB header with version 0x0200, then HDF5 (the content is never reached)
    header = b"MATLAB 7.3 MAT-file".ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM"
    with open(os.path.join(base, "cuhk03_release", "cuhk-03.mat"), "wb") as f:
        f.write(header + b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(DatasetError, match="MATLAB v7.3 \\(HDF5\\) file, which scipy cannot read; install h5py"):
        build_dataset("cuhk03", str(tmp_path), verbose=False)
    assert not any(n.startswith("images_detected") for n in os.listdir(base))  # no half-extracted folder left
