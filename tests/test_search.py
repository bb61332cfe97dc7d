"""faiss gallery search against exact brute force, and top-k evaluation against the exact evaluator."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from esreid.evaluation.distance import pairwise_distance
from esreid.evaluation.metrics import evaluate_rank
from esreid.evaluation.search import GalleryIndex, evaluate_topk, faiss_module, search_main

pytest.importorskip("faiss")


def clustered(seed, n, ids=20, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim)) * 3
    pids = rng.integers(0, ids, n)
    return (centres[pids] + rng.normal(size=(n, dim))).astype(np.float32), pids, rng.integers(0, 3, n)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_flat_equals_brute_force(metric):
    gf, _, _ = clustered(0, 300)
    qf, _, _ = clustered(1, 17)
    ids = np.arange(300) * 10 + 5
    dist, got = GalleryIndex("flat", metric).add(gf[:100], ids[:100]).add(gf[100:], ids[100:]).search(qf, 7)
    full = pairwise_distance(qf, gf, metric).numpy()
    want = np.argsort(full, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(got, ids[want])
    np.testing.assert_allclose(dist, np.take_along_axis(full, want, 1), atol=1e-4)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_recall(kind):
    gf, _, _ = clustered(2, 4000)
    qf, _, _ = clustered(3, 50)
    _, exact = GalleryIndex("flat").add(gf).search(qf, 10)
    _, approx = GalleryIndex(kind, nprobe=8).add(gf).search(qf, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)])
    assert recall > 0.9


def test_save_load_roundtrip(tmp_path):
    gf, _, _ = clustered(4, 200)
    index = GalleryIndex("hnsw", "euclidean").add(gf, np.arange(200) + 1000)
    index.save(str(tmp_path / "g.npz"))
    loaded = GalleryIndex.load(str(tmp_path / "g.npz"))
    assert (loaded.kind, loaded.metric, len(loaded)) == ("hnsw", "euclidean", 200)
    for a, b in zip(index.search(gf[:5], 4), loaded.search(gf[:5], 4)):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.npz"):
        GalleryIndex.load(str(tmp_path / "bad.npz"))


def test_topk_evaluation_is_exact_for_cmc_and_bounds_map():
    gf, gp, gc = clustered(5, 400)
    qf, qp, qc = clustered(6, 60)
    index = GalleryIndex("flat").add(gf)
    exact = evaluate_rank(qp, gp, qc, gc, distmat=pairwise_distance(qf, gf).double())
    top = evaluate_topk(qp, gp, qc, gc, qf, index, k=10, ranks=(1, 5, 10))
    assert [top["R1"], top["R5"], top["R10"]] == pytest.approx(exact.cmc[[0, 4, 9]].tolist())
    assert top["mAP@10"] <= exact.mAP
    whole = evaluate_topk(qp, gp, qc, gc, qf, index, k=400, ranks=(1,))
    assert whole["mAP@400"] == pytest.approx(exact.mAP, abs=1e-6)
    assert (whole["num_valid_q"], whole["num_skipped_q"]) == (exact.num_valid_q, exact.num_skipped_q)


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"esreid\[faiss\]"):
        faiss_module()


def test_search_main(tmp_path, capsys):
    gf, _, _ = clustered(7, 100)
    np.savez(tmp_path / "g.npz", feats=gf, ids=np.arange(100) + 7)
    np.savez(tmp_path / "q.npz", feats=gf[:3])
    assert search_main(["--gallery", str(tmp_path / "g.npz"), "--query", str(tmp_path / "q.npz"), "-k", "2",
                        "--save-index", str(tmp_path / "i.npz"), "--output", str(tmp_path / "o.npz")]) == 0
    out = np.load(tmp_path / "o.npz")
    np.testing.assert_array_equal(out["ids"][:, 0], [7, 8, 9])  # each query finds itself first
    assert search_main(["--load-index", str(tmp_path / "i.npz"), "--query", str(tmp_path / "q.npz"), "-k", "1"]) == 0
    assert "query 2: 9:" in capsys.readouterr().out
    np.savez(tmp_path / "bad.npz", x=gf)
    with pytest.raises(SystemExit, match="expected an array 'feats'"):
        search_main(["--gallery", str(tmp_path / "bad.npz"), "--query", str(tmp_path / "q.npz")])
