"""Test-wide settings and shared fixtures.

One intra-op thread (tiny tensors run fastest that way and results are reproducible), also for the trainer and the
commands (``threads: auto`` reads ``OMP_NUM_THREADS``). Shared helpers are fixtures here, never imported from another
test module: ``tiny_config`` (a factory of tiny synthetic-data training configs), ``layouts``
(writers of the real dataset layouts with their quirks), ``people`` (the custom layout with images of people),
``storage`` (disk-full / read-only faults), ``synthetic_files``, ``runs`` (comparing two runs' checkpoints and
records), ``randomise_bn`` (non-trivial BatchNorm statistics)
and ``chromium``: a headless browser driven over the DevTools pipe (tests/chromium.py); a test using it is skipped,
with the reason, where no Chromium is installed (``bash scripts/setup.sh`` installs Debian's as root).
"""

import errno
import hashlib
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import esreid.files as files
from esreid.config import load_config

torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"  # and `threads: auto` (esreid.engine.threads) keeps it, here and in subprocesses


# --------------------------------------------------------------------------------------------------------------
# Tiny training runs
# --------------------------------------------------------------------------------------------------------------
TINY_DATA = '{"num_train_ids": 16, "num_test_ids": 8, "images_per_id": 6, "height": 64, "width": 32}'


def make_tiny_config(root, name="baseline", epochs=2, out="run", extra=()):
    """A config training ``name`` on a tiny resnet at 32x16 on 16 synthetic ids (generated under ``root/data``),
    4 x 2 batches, evaluating and checkpointing every epoch into ``root/out``; no report.html (``report=true`` in
    ``extra`` for one: drawing it costs about a second per evaluation)."""
    return load_config(None, [
        "data.name=synthetic", f"data.root={os.path.join(str(root), 'data')}", f"data.args={TINY_DATA}",
        "data.height=32", "data.width=16", "data.ids_per_batch=4", "data.instances=2", "data.workers=0",
        f"model.name={name}", "model.backbone=resnet_tiny", f"solver.epochs={epochs}", "solver.warmup_epochs=1",
        "solver.milestones=[1]", "solver.lr=1e-3", "test.eval_period=1", "device=cpu", "log_period=1",
        "checkpoint.period=1", f"output_dir={os.path.join(str(root), out)}", "report=false", *extra,
    ])


@pytest.fixture
def tiny_config(tmp_path):
    """``tiny_config(name="baseline", epochs=2, out="run", extra=(), root=tmp_path)`` -> a loaded Config."""

    def make(name="baseline", epochs=2, out="run", extra=(), root=None):
        return make_tiny_config(root if root is not None else tmp_path, name, epochs, out, extra)

    return make


# Comparing two runs (an interrupted and resumed one against the uninterrupted one)
RUN_TIMING = {"seconds", "images_per_second", "eval_seconds", "data_seconds", "eta_seconds", "peak_memory_mb"}


def run_records(run):
    """The records of ``run/metrics.jsonl`` without their timings."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in RUN_TIMING} for line in lines]


def assert_same_state(a, b, where=""):
    """Equal checkpoint contents (nested dicts, lists, tensors): tensors bit for bit; timings and the output folder
    left out."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        keys = set(a) - RUN_TIMING - {"output_dir"}
        assert keys == set(b) - RUN_TIMING - {"output_dir"}, where
        for k in keys:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture
def runs():
    """``runs.assert_same(a, b, where)`` (checkpoint contents equal bit for bit, timings aside) and
    ``runs.records(run)`` (metrics.jsonl without timings)."""
    return SimpleNamespace(assert_same=assert_same_state, records=run_records)


# --------------------------------------------------------------------------------------------------------------
# Non-trivial BatchNorm
# --------------------------------------------------------------------------------------------------------------
def randomise_batchnorm(module, seed=0):
    """Random running statistics, weights and (trainable) biases in every BatchNorm of ``module``: a fresh BN in
    eval mode is the identity (up to sqrt(1 + eps)), so a test that confuses pre-BN and post-BN tensors would pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                if m.bias.requires_grad:  # BNNeck's shift stays frozen at 0
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return module


@pytest.fixture
def randomise_bn():
    """``randomise_bn(module, seed=0)``: non-trivial statistics and affine parameters in every BatchNorm."""
    return randomise_batchnorm


# --------------------------------------------------------------------------------------------------------------
# Dataset layouts
# --------------------------------------------------------------------------------------------------------------
def write_image(path, size=(4, 8)):
    """A tiny valid image (width, height) at ``path``; the format follows the extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (len(path) % 256, 80, 160)).save(path)


def write_files(folder, names):
    """Images (by extension) and junk files (anything else) named ``names`` in ``folder``."""
    for name in names:
        path = os.path.join(folder, name)
        if name.lower().endswith((".jpg", ".jpeg", ".png")):
            write_image(path)
        else:
            os.makedirs(folder, exist_ok=True)
            with open(path, "wb") as f:
                f.write(b"\x00junk")


def make_layout(root, prefix, layout):
    """``layout`` = {folder: file names} written under ``root/prefix``; returns that folder."""
    for folder, names in layout.items():
        write_files(os.path.join(root, prefix, folder), names)
    return os.path.join(root, prefix)


MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s3_077419_03.jpg",
                           "1500_c6s4_002202_01.jpg", "Thumbs.db"],
    "query": ["0002_c5s1_000401_01.jpg", "0007_c6s3_076594_00.jpg"],
    "bounding_box_test": ["0002_c1s1_001051_02.jpg", "-1_c1s1_000401_03.jpg", "0000_c3s2_023454_06.jpg",
                          "0007_c2s3_070952_01.jpg", "Thumbs.db"],
}
DUKE = {
    "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c6_f0160252.jpg", "0005_c8_f0001234.jpg", "Thumbs.db"],
    "query": ["0001_c1_f0050000.jpg"],
    "bounding_box_test": ["0001_c5_f0060000.jpg", "7140_c3_f0100000.jpg"],  # 7140: a gallery-only distractor id
}
VERI = {
    "image_train": ["0002_c002_00030600_0.jpg", "0002_c003_00030605_1.jpg", "0776_c020_00000001_0.jpg"],
    "image_query": ["0005_c010_00012345_0.jpg"],
    "image_test": ["0005_c011_00012399_0.jpg", "0005_c001_00012000_0.jpg", "readme.txt"],
}
VEHICLEID_TRAIN = ["0000001 10", "0000002 10", "0000003 42"]
VEHICLEID_TESTS = {800: ["0000100 7", "0000101 7", "0000102 8"], 1600: ["0000100 7", "0000103 9"],
                   2400: ["0000104 11"]}


def make_market(root, prefix="market1501/Market-1501-v15.09.15"):
    return make_layout(root, prefix, MARKET)


def make_vehicleid(root, prefix="VehicleID_V1.0"):
    base = os.path.join(root, prefix)
    names = {line.split()[0] + ".jpg" for lines in [VEHICLEID_TRAIN, *VEHICLEID_TESTS.values()] for line in lines}
    write_files(os.path.join(base, "image"), sorted(names) + ["Thumbs.db"])
    split_dir = os.path.join(base, "train_test_split")
    os.makedirs(split_dir)
    lists = [("train_list.txt", VEHICLEID_TRAIN)] + [(f"test_list_{n}.txt", v) for n, v in VEHICLEID_TESTS.items()]
    for list_name, lines in lists:
        with open(os.path.join(split_dir, list_name), "w") as f:
            f.write("\n".join(lines) + "\n")
    return base


def triples(items, base):
    """(path relative to ``base``, pid, camid) of parsed items."""
    return [(os.path.relpath(it.path, base), it.pid, it.camid) for it in items]


@pytest.fixture
def layouts():
    """The layout writers and their file lists (module-level functions of this conftest)."""
    return SimpleNamespace(write_image=write_image, write_files=write_files, make_layout=make_layout,
                           make_market=make_market, make_vehicleid=make_vehicleid, triples=triples, MARKET=MARKET,
                           DUKE=DUKE, VERI=VERI, VEHICLEID_TRAIN=VEHICLEID_TRAIN, VEHICLEID_TESTS=VEHICLEID_TESTS)


# --------------------------------------------------------------------------------------------------------------
# Users' own data: the custom layout with images of people
# --------------------------------------------------------------------------------------------------------------
PALETTE = [(200, 40, 40), (40, 160, 60), (40, 70, 200), (230, 200, 40), (120, 60, 170), (30, 30, 30)]


def person_image(pid, seed, size=(32, 64)):
    """A noisy two-colour figure (upper / lower body colours from ``PALETTE``, fixed per ``pid``) on a grey
    background, ``size`` = (width, height); identities share colours, so some are confused."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.full((h, w, 3), 128.0)
    top, bottom = PALETTE[pid % len(PALETTE)], PALETTE[(pid // len(PALETTE) + 2 * pid) % len(PALETTE)]
    x0, x1 = w // 4 + int(rng.integers(-2, 3)), 3 * w // 4 + int(rng.integers(-2, 3))
    img[h // 8: h // 2, x0:x1], img[h // 2: 7 * h // 8, x0:x1] = top, bottom
    img += rng.normal(0, 30, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_people(root, train_ids=8, test_ids=8, images=2, ext=".png"):
    """The custom layout ``root/{train,query,gallery}/<pid:04d>/<camera>/<n><ext>``: train ids 1.. on cameras
    cam1 and cam2, test ids 101.. with the query on cam1 and the gallery on cam2; ``images`` per id and camera.
    Returns ``root``."""
    seed = 0
    splits = [("train", range(1, train_ids + 1), ("cam1", "cam2")),
              ("query", range(101, 101 + test_ids), ("cam1",)), ("gallery", range(101, 101 + test_ids), ("cam2",))]
    for split, pids, cameras in splits:
        for pid in pids:
            for camera in cameras:
                folder = os.path.join(str(root), split, f"{pid:04d}", camera)
                os.makedirs(folder, exist_ok=True)
                for n in range(images):
                    person_image(pid, seed).save(os.path.join(folder, f"{n}{ext}"))
                    seed += 1
    return str(root)


@pytest.fixture(scope="session")
def people():
    """``people.write(root, train_ids=8, test_ids=8, images=2, ext=".png")`` writes the custom layout with person
    images; ``people.image(pid, seed, size)`` one such PIL image."""
    return SimpleNamespace(write=write_people, image=person_image)


# --------------------------------------------------------------------------------------------------------------
# Storage faults (disk full, read-only) and dead processes
# --------------------------------------------------------------------------------------------------------------
class _Filling:
    """A file on a disk that fills up after ``budget`` bytes: the write that crosses it stores what fits, then raises
    ``OSError(ENOSPC)`` as the kernel does."""

    def __init__(self, f, budget):
        self.f, self.left = f, budget

    def write(self, data):
        n = memoryview(data).nbytes
        if n > self.left:
            self.f.write(memoryview(data).cast("B")[: self.left])
            self.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left -= n
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _patch_open(monkeypatch, wrap):
    """Route the files :mod:`esreid.files` opens for writing through ``wrap(path, real_open_file)``."""
    real = open

    def fake(path, mode="r", *args, **kwargs):
        if not any(c in mode for c in "wax+"):
            return real(path, mode, *args, **kwargs)
        return wrap(path, lambda: real(path, mode, *args, **kwargs))

    monkeypatch.setattr(files, "open", fake, raising=False)


def simulate_full_disk(monkeypatch, budget):
    """From now on the disk holds only ``budget`` more bytes of files.py's writes."""
    _patch_open(monkeypatch, lambda path, opener: _Filling(opener(), budget))


def simulate_read_only(monkeypatch):
    """Every file files.py opens for writing is on a read-only file system (works as root, unlike chmod)."""

    def refuse(path, opener):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    _patch_open(monkeypatch, refuse)


def make_read_only(folder):
    """chmod ``folder`` read-only; skips the test where that does not stop writing (root)."""
    os.chmod(folder, 0o555)
    if os.access(folder, os.W_OK):
        os.chmod(folder, 0o755)
        pytest.skip("chmod does not make folders read-only for this user (root)")


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def storage():
    """Fault injection for esreid.files' writes: ``simulate_full_disk(monkeypatch, budget)``,
    ``simulate_read_only(monkeypatch)``, ``make_read_only(folder)``, and ``dead_pid()``."""
    return SimpleNamespace(simulate_full_disk=simulate_full_disk, simulate_read_only=simulate_read_only,
                           make_read_only=make_read_only, dead_pid=dead_pid)


# --------------------------------------------------------------------------------------------------------------
# Synthetic dataset files
# --------------------------------------------------------------------------------------------------------------
MARKET_NAME = re.compile(r"^(-1|\d{4})_c([1-6])s(\d+)_(\d{6})_(\d{2})\.jpg$")


def listing(root):
    out = {}
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        out[folder] = sorted(os.listdir(os.path.join(root, folder)))
    return out


def digest(root):
    h = hashlib.sha256()
    for folder, names in listing(root).items():
        for name in names:
            h.update(name.encode())
            with open(os.path.join(root, folder, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture
def synthetic_files():
    """``MARKET_NAME`` (the Market file-name pattern), ``listing(root)`` and ``digest(root)`` of a generated set."""
    return SimpleNamespace(MARKET_NAME=MARKET_NAME, listing=listing, digest=digest)


# --------------------------------------------------------------------------------------------------------------
# Headless Chromium
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture
def chromium(tmp_path_factory):
    from chromium import NAMES, Chromium, find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip(f"no Chromium on PATH (looked for {', '.join(NAMES)}); bash scripts/setup.sh installs it as root")
    folder = tmp_path_factory.mktemp("chromium")
    with Chromium(binary, str(folder / "profile"), str(folder / "browser.log")) as browser:
        yield browser
