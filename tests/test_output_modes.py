"""Every file esreid writes gets the permissions of any new file (0666 minus the umask), so a group that reads the
outputs reads checkpoints, search results and feature files too: a temporary file created private (mkstemp's 0600)
and moved into place would not be."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from esreid.engine.trainer import Trainer
from esreid.evaluation.search import GalleryIndex, search_files, write_results
from esreid.inference import save_features


@pytest.fixture(params=[0o022, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_training_outputs_and_checkpoints(tmp_path, tiny_config, umask):
    Trainer(tiny_config(epochs=1), progress=False, log=lambda s: None).train()
    run = tmp_path / "run"
    names = ["last.pth", "epoch_001.pth", "config.yaml", "metrics.jsonl", "results.json"]
    assert {name: mode(run / name) for name in names} == {name: 0o666 & ~umask for name in names}


def test_features_search_results_and_indexes(tmp_path, umask):
    pytest.importorskip("faiss")
    feats = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    save_features(str(tmp_path / "g.npz"), feats, [f"{i}.jpg" for i in range(6)], np.arange(6), np.zeros(6))
    results = search_files(str(tmp_path / "g.npz"), 3, gallery=str(tmp_path / "g.npz"))
    written = ["g.npz"]
    for ext in (".json", ".csv", ".npz"):
        write_results(results, str(tmp_path / f"top{ext}"))
        written.append(f"top{ext}")
    GalleryIndex("flat").add(feats).save(str(tmp_path / "index.npz"))
    written.append("index.npz")
    assert {name: mode(tmp_path / name) for name in written} == {name: 0o666 & ~umask for name in written}
