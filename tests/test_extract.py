"""`esreid extract` on a tiny synthetic dataset: the .npz holds the evaluator's features with pids, cameras and paths
in dataset order, `esreid search` on the files ranks like brute-force cosine, and the exported ONNX graph fed the
decoded images reproduces the extracted features."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from esreid.cli import main
from esreid.config import load_config
from esreid.data.base import build_dataset
from esreid.data.transforms import TestTransform, decode_resize
from esreid.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 32, 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A synthetic dataset, a tiny ES-Net checkpoint and the config overrides pointing at both."""
    tmp = tmp_path_factory.mktemp("extract")
    args = {"num_train_ids": 3, "num_test_ids": 4, "images_per_id": 4, "height": H, "width": W, "num_junk": 2,
            "num_distractors": 3}
    overrides = ["data.name=synthetic", f"data.root={tmp / 'data'}", f"data.args={json.dumps(args)}",
                 f"data.height={H}", f"data.width={W}", "data.workers=0", "data.test_batch_size=5", "device=cpu",
                 "model.backbone=resnet_tiny", "model.pretrained=", "model.esb_pooling=ppool"]
    config = os.path.join(ROOT, "configs", "market1501", "esnet.yaml")
    cfg = load_config(config, overrides)
    dataset = build_dataset(cfg.data.name, cfg.data.root, verbose=False, **cfg.data.args)
    torch.manual_seed(0)
    model = build_model(cfg.model, dataset.num_train_pids).eval()
    weights = tmp / "w.pth"
    torch.save(model.state_dict(), weights)
    return tmp, config, overrides, cfg, dataset, str(weights)


def extract(setup, split):
    tmp, config, overrides, *_, weights = setup
    out = tmp / f"{split}.npz"
    assert main(["extract", "--config", config, "--weights", weights, "--split", split, "--out", str(out),
                 *overrides]) == 0
    with np.load(out, allow_pickle=False) as f:
        return str(out), {k: f[k] for k in f.files}


@pytest.mark.parametrize("split", ["query", "gallery", "train"])
def test_npz_layout(setup, split):
    _, _, _, _, dataset, _ = setup
    _, f = extract(setup, split)
    items = getattr(dataset, split)
    assert set(f) == {"feats", "ids", "camids", "paths"}
    assert f["feats"].dtype == np.float32 and f["feats"].shape[0] == len(items)
    assert f["ids"].dtype == np.int64 and f["camids"].dtype == np.int64
    np.testing.assert_array_equal(f["ids"], [i.pid for i in items])
    np.testing.assert_array_equal(f["camids"], [i.camid for i in items])
    assert list(f["paths"]) == [i.path for i in items]
    dims = f["feats"].shape[1] // 2  # ES-Net: two branches, each L2-normalised (config test.normalize)
    np.testing.assert_allclose(np.linalg.norm(f["feats"][:, :dims], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(f["feats"][:, dims:], axis=1), 1.0, atol=1e-5)


def test_search_on_extracted_files_ranks_like_brute_force_cosine(setup):
    tmp = setup[0]
    q_path, q = extract(setup, "query")
    g_path, g = extract(setup, "gallery")
    out = tmp / "top.npz"
    k = 6
    assert main(["search", "--gallery", g_path, "--query", q_path, "-k", str(k), "--output", str(out)]) == 0
    qf, gf = q["feats"].astype(np.float64), g["feats"].astype(np.float64)
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    gf /= np.linalg.norm(gf, axis=1, keepdims=True)
    dist = 1.0 - qf @ gf.T
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    with np.load(out) as top:
        np.testing.assert_array_equal(top["ids"], g["ids"][order])
        np.testing.assert_allclose(top["dist"], np.take_along_axis(dist, order, 1), atol=1e-5)


def test_onnx_graph_on_decoded_images_reproduces_extracted_features(setup):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    tmp, config, overrides, cfg, dataset, weights = setup
    _, q = extract(setup, "query")
    onnx_path = tmp / "m.onnx"
    assert main(["export", "--config", config, "--weights", weights, "--out", str(onnx_path), "--dynamic-batch",
                 *overrides]) == 0
    images = TestTransform(cfg.data)(torch.stack([decode_resize(i.path, H, W) for i in dataset.query]))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (feats,) = session.run(["feats"], {"images": images.numpy()})
    np.testing.assert_allclose(feats, q["feats"], atol=1e-4)


def test_bad_input_is_named(setup, capsys):
    tmp, config, overrides, *_ = setup
    argv = ["extract", "--config", config, "--weights", str(tmp / "missing.pth"), "--split", "query", "--out",
            str(tmp / "x.npz"), *overrides]
    assert main(argv) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert main(argv[:5] + ["--split", "test"] + argv[7:]) == 2
