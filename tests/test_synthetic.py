"""The synthetic-people generator: exact Market-1501 layout and naming, determinism, idempotence, identity signal."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from esreid.data.base import DATASETS, DatasetError
from esreid.data.datasets.synthetic import SyntheticMarket, generate_synthetic_market

SMALL = dict(num_train_ids=10, num_test_ids=12, images_per_id=6, height=64, width=32, num_junk=5, num_distractors=4)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("syn") / "s")
    info = generate_synthetic_market(root, seed=3, **SMALL)
    return root, info


def test_market_layout_and_naming(small, synthetic_files):
    root, info = small
    files = synthetic_files.listing(root)
    parsed = defaultdict(list)  # folder -> (pid, cam)
    for folder, names in files.items():
        assert names, f"{folder} is empty"
        for name in names:
            m = synthetic_files.MARKET_NAME.match(name)
            assert m, f"{folder}/{name} is not a Market-1501 name"
            parsed[folder].append((int(m.group(1)), int(m.group(2))))
            assert Image.open(os.path.join(root, folder, name)).size == (32, 64)
    train_ids = {p for p, _ in parsed["bounding_box_train"]}
    query_ids = {p for p, _ in parsed["query"]}
    gallery_ids = {p for p, _ in parsed["bounding_box_test"]}
    assert len(train_ids) == 10 and len(query_ids) == 12
    assert not train_ids & (query_ids | gallery_ids)  # disjoint train/test ids
    assert all(1 <= p <= 1501 for p in train_ids | query_ids)
    assert {-1, 0} <= gallery_ids and -1 not in train_ids | query_ids and 0 not in train_ids | query_ids
    gallery_pids = [p for p, _ in parsed["bounding_box_test"]]
    assert gallery_pids.count(-1) == 5 and gallery_pids.count(0) == 4
    # one query per (id, camera), and each has a gallery match in another camera
    assert len(set(parsed["query"])) == len(parsed["query"])
    for pid, cam in parsed["query"]:
        assert any(p == pid and c != cam for p, c in parsed["bounding_box_test"]), (pid, cam)
    # every train id is seen by at least two cameras
    cams = defaultdict(set)
    for pid, cam in parsed["bounding_box_train"]:
        cams[pid].add(cam)
    assert all(len(c) >= 2 for c in cams.values())
    counts = info["counts"]
    assert counts["gallery"] == [len(gallery_ids - {-1}), len(gallery_pids) - 5]  # junk is not counted


def test_dataset_class_parses_with_market_loader(small, tmp_path, synthetic_files):
    assert DATASETS.get("synthetic") is SyntheticMarket
    ds = SyntheticMarket(str(tmp_path), verbose=False, seed=3, **SMALL)
    assert ds.check_counts() == []
    assert sorted({it.pid for it in ds.train}) == list(range(10))  # relabelled
    assert all(it.pid != -1 for it in ds.gallery) and any(it.pid == 0 for it in ds.gallery)
    # same seed + options, same files
    assert synthetic_files.listing(str(tmp_path / "synthetic")) == synthetic_files.listing(small[0])


def test_deterministic_per_seed(small, tmp_path, synthetic_files):
    root, _ = small
    again = str(tmp_path / "again")
    generate_synthetic_market(again, seed=3, **SMALL)
    assert synthetic_files.digest(again) == synthetic_files.digest(root)
    other = str(tmp_path / "other")
    generate_synthetic_market(other, seed=4, **SMALL)
    assert synthetic_files.digest(other) != synthetic_files.digest(root)


def test_idempotent_and_regenerates_on_change(tmp_path, synthetic_files):
    root = str(tmp_path / "s")
    opts = dict(SMALL, num_train_ids=4, num_test_ids=3)
    generate_synthetic_market(root, **opts)
    marker = os.path.join(root, "synthetic.json")
    stamp = os.stat(marker).st_mtime_ns
    first = synthetic_files.listing(root)
    generate_synthetic_market(root, **opts)
    assert os.stat(marker).st_mtime_ns == stamp and synthetic_files.listing(root) == first
    generate_synthetic_market(root, **dict(opts, num_train_ids=5))
    with open(marker) as f:
        assert json.load(f)["params"]["num_train_ids"] == 5
    assert len({n[:4] for n in synthetic_files.listing(root)["bounding_box_train"]}) == 5
    assert os.listdir(tmp_path) == ["s"]  # the replaced dataset is gone, nothing left beside it


def test_refuses_to_overwrite_foreign_data(tmp_path):
    os.makedirs(tmp_path / "query")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        generate_synthetic_market(str(tmp_path), **SMALL)
    assert os.listdir(tmp_path) == ["query"]
    (tmp_path / "query").rmdir()
    (tmp_path / "notes.txt").write_text("mine")  # any other content: the folder is not the generator's to replace
    with pytest.raises(DatasetError, match="not empty"):
        generate_synthetic_market(str(tmp_path), **SMALL)
    assert os.listdir(tmp_path) == ["notes.txt"]
    with pytest.raises(DatasetError, match="images_per_id"):
        generate_synthetic_market(str(tmp_path / "x"), **dict(SMALL, images_per_id=3))
    root = tmp_path / "s"
    generate_synthetic_market(str(root), **SMALL)
    (root / "notes.txt").write_text("mine")  # regenerating replaces the folder: not with a file it did not write
    with pytest.raises(DatasetError, match="notes.txt"):
        generate_synthetic_market(str(root), **dict(SMALL, seed=1))
    assert (root / "notes.txt").read_text() == "mine" and json.loads((root / "synthetic.json").read_text())


KILLED = dict(num_train_ids=40, num_test_ids=20, images_per_id=10, seed=5, num_junk=5, num_distractors=5)


def test_killed_generation_leaves_no_partial_dataset(tmp_path, synthetic_files):
    """SIGKILL a generating process midway: the root never appears half-written; the next call removes the dead
    generator's folder and regenerates, byte-identical to an uninterrupted generation."""
    root = tmp_path / "data" / "s"
    code = (
        "import sys; from esreid.data.datasets.synthetic import generate_synthetic_market as g; "
        f"g(sys.argv[1], **{KILLED!r})"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], env=env)
    try:
        deadline = time.monotonic() + 60
        written = 0
        while written < 40 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
            written = sum(len(files) for _, _, files in os.walk(root.parent))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert written >= 40, "the generator did not start writing (or finished before it was killed)"
    assert proc.returncode == -signal.SIGKILL and not root.exists()
    (partial,) = os.listdir(root.parent)  # what the killed generator left: a hidden folder beside the root
    assert partial.startswith(".s.partial-")
    info = generate_synthetic_market(str(root), **KILLED)
    assert os.listdir(root.parent) == ["s"]
    reference = tmp_path / "reference"
    assert generate_synthetic_market(str(reference), **KILLED) == info
    assert synthetic_files.digest(str(root)) == synthetic_files.digest(str(reference))


def test_stale_folders_of_dead_generators_removed_live_ones_kept(tmp_path):
    root = tmp_path / "s"
    generate_synthetic_market(str(root), **SMALL)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # reaped: its pid now belongs to no process (pids are not reused this fast)
    host = socket.gethostname()
    stale = [tmp_path / f".s.partial-{host}-{dead.pid}", tmp_path / f".s.old-{host}-{dead.pid}"]
    kept = [tmp_path / f".s.partial-{host}-{os.getppid()}", tmp_path / f".s.partial-otherhost-{dead.pid}"]
    for folder in stale + kept:
        (folder / "query").mkdir(parents=True)
    generate_synthetic_market(str(root), **SMALL)  # unchanged parameters: nothing generated, stale folders removed
    assert sorted(os.listdir(tmp_path)) == sorted(["s"] + [k.name for k in kept])


def test_identity_signal_nearest_neighbour_beats_chance(tmp_path, synthetic_files):
    """Rank-1 of raw-pixel nearest neighbour clearly beats chance.

    Pixels of 16x8 images, central half of the width (the person), each channel standardised per image (removes the
    camera colour cast); gallery images of the query's own camera excluded. Whole-image pixels are dominated by the
    camera background, by design: the identity has to be found in the person.
    """
    root = str(tmp_path / "s")
    generate_synthetic_market(root, num_train_ids=1, num_test_ids=40, images_per_id=8, height=64, width=32, seed=0,
                              num_junk=0, num_distractors=0)  # fmt: skip

    def load(folder):
        feats, pids, cams = [], [], []
        for name in sorted(os.listdir(os.path.join(root, folder))):
            img = Image.open(os.path.join(root, folder, name)).resize((8, 16), Image.BILINEAR)
            x = np.asarray(img, dtype=np.float64)[:, 2:6]
            feats.append(((x - x.mean((0, 1))) / (x.std((0, 1)) + 1e-6)).ravel())
            m = synthetic_files.MARKET_NAME.match(name)
            pids.append(int(m.group(1)))
            cams.append(int(m.group(2)))
        return np.stack(feats), np.array(pids), np.array(cams)

    qf, qp, qc = load("query")
    gf, gp, gc = load("bounding_box_test")
    dist = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    dist[(qp[:, None] == gp[None, :]) & (qc[:, None] == gc[None, :])] = np.inf  # Market junk rule
    rank1 = float(np.mean(gp[dist.argmin(1)] == qp))
    chance = 1 / 40
    assert rank1 > 8 * chance, f"rank-1 {rank1:.3f} vs chance {chance:.3f}"


def test_pk_batches_from_synthetic_data(tmp_path):
    from esreid.config import DataConfig
    from esreid.data.loader import build_train_loader
    from esreid.data.transforms import TrainAugment

    ds = SyntheticMarket(str(tmp_path), verbose=False, seed=3, **SMALL)
    cfg = DataConfig(height=32, width=16, ids_per_batch=3, instances=4, workers=0, random_erasing=0.5, pad=2)
    loader = build_train_loader(cfg, ds.train, seed=0)
    augment = TrainAugment(cfg, seed=0)
    batch = next(iter(loader))
    x = augment(batch["images"])
    assert x.shape == (12, 3, 32, 16) and x.dtype.is_floating_point
    assert sorted(batch["pids"].bincount().tolist())[-3:] == [4, 4, 4]


def test_image_count_is_bounded_before_anything_is_written(tmp_path):
    """images_per_id=1e8 would write 10^10 images (the disk fills long before); refused with the options, as the
    config is loaded, and by the generator itself."""
    problem = SyntheticMarket.check_options({"images_per_id": 10**8})
    assert problem == ("synthetic: these options generate up to 30,800,000,080 images, more than the 200,000 allowed "
                       "(MSMT17, the largest person set, has 126,441): lower images_per_id (now 100,000,000), the "
                       "numbers of ids or num_junk / num_distractors")
    with pytest.raises(DatasetError, match="up to 30,800,000,080 images"):
        generate_synthetic_market(str(tmp_path / "s"), images_per_id=10**8)
    assert SyntheticMarket.check_options({"num_distractors": 10**6}).startswith("synthetic: these options generate")
    assert "at most 1024x1024" in SyntheticMarket.check_options({"height": 4096})
    assert not os.path.exists(tmp_path / "s") and os.listdir(tmp_path) == []
    assert SyntheticMarket.check_options({"images_per_id": 600}) is None  # 220 ids x 840 + 80: under the bound


def test_free_space_is_checked_before_generating(tmp_path, monkeypatch):
    import shutil

    import esreid.files as files

    usage = type(shutil.disk_usage(tmp_path))(total=10**9, used=10**9 - 100_000, free=100_000)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(DatasetError, match=r"^synthetic: not enough free space in .* for the synthetic dataset: "
                                           r"needs .*, 100.0 kB \(100000 bytes\) free; .* \(or lower images_per_id"):
        generate_synthetic_market(str(tmp_path / "s"), **SMALL)
    assert os.listdir(tmp_path) == []
