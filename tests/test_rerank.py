"""k-reciprocal re-ranking against a brute-force implementation written straight from the paper's definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_metrics import layouts

from esreid.evaluation.distance import pairwise_distance
from esreid.evaluation.rerank import re_ranking


def brute_force(qf, gf, k1, k2, lam, metric):
    """Python sets and loops over every item; float64 after the (shared) float32 distance computation."""
    x = np.concatenate([qf, gf])
    d = pairwise_distance(x, x, metric).double().numpy()
    d = d / d.max(1, keepdims=True)
    n = len(x)

    def nbrs(p, k):  # N(p, k): the k+1 nearest, self included, ties by index
        return [int(i) for i in np.argsort(d[p], kind="stable")[: k + 1]]

    def recip(p, k):  # R(p, k)
        return {g for g in nbrs(p, k) if p in nbrs(g, k)}

    kh = int(round(k1 / 2))
    v = np.zeros((n, n))
    for p in range(n):
        r = recip(p, k1)
        star = set(r)
        for q in r:
            rq = recip(q, kh)
            if len(r & rq) > 2 / 3 * len(rq):
                star |= rq
        for g in star:
            v[p, g] = np.exp(-d[p, g])
        v[p] /= v[p].sum()
    v = np.stack([v[nbrs(p, k2 - 1)].mean(0) for p in range(n)])
    nq = len(qf)
    out = np.zeros((nq, len(gf)))
    for i in range(nq):
        for j in range(len(gf)):
            a, b = v[i], v[nq + j]
            jac = 1 - np.minimum(a, b).sum() / np.maximum(a, b).sum()
            out[i, j] = (1 - lam) * jac + lam * d[i, nq + j]
    return out


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k1,k2,lam,seed", [(20, 6, 0.3, 0), (5, 1, 0.0, 1), (7, 3, 0.5, 2), (4, 5, 1.0, 3)])
def test_matches_brute_force(metric, k1, k2, lam, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 8))
    ids = rng.integers(0, 5, 33)
    x = (centres[ids] + 0.7 * rng.normal(size=(33, 8))).astype(np.float32)
    qf, gf = x[:9], x[9:]
    want = brute_force(qf, gf, k1, k2, lam, metric)
    got = re_ranking(torch.from_numpy(qf), torch.from_numpy(gf), k1, k2, lam, metric=metric, chunk_size=4,
                     max_pairs=50)
    np.testing.assert_allclose(got.numpy(), want, atol=2e-6)


def test_chunking_and_join_groups_do_not_change_the_result():
    rng = np.random.default_rng(4)
    qf, gf = rng.normal(size=(10, 6)).astype(np.float32), rng.normal(size=(40, 6)).astype(np.float32)
    a = re_ranking(qf, gf, 6, 3, chunk_size=1, max_pairs=1)
    b = re_ranking(qf, gf, 6, 3)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_bad_parameters():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="at least 21 images"):
        re_ranking(x, x)
    with pytest.raises(ValueError, match="k2"):
        re_ranking(x, x, k1=2, k2=5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_features_of_any_layout_give_the_contiguous_result(dtype):
    rng = np.random.default_rng(5)
    qf, gf = rng.normal(size=(8, 6)).astype(dtype), rng.normal(size=(30, 6)).astype(dtype)
    want = re_ranking(qf, gf, 6, 3)
    assert want.dtype == (torch.float64 if dtype == np.float64 else torch.float32)
    for (name, q), g in zip(layouts(qf).items(), layouts(gf).values()):
        assert torch.equal(re_ranking(q, g, 6, 3), want), name
    with pytest.raises(ValueError, match="qf: expected floating-point features"):
        re_ranking(qf.astype(np.int32), gf)


def test_test_rerank_uses_the_papers_defaults_k1_20_k2_6_lambda_0_3():
    """``test.rerank: true`` reaches the protocols' ``distance_chunks(..., rerank=True)`` with no parameter of its own:
    its distances must be Zhong et al.'s defaults (k1 = 20, k2 = 6, λ = 0.3), computed by the brute force. Each of
    the other values tried gives distances that differ by far more than the tolerance, so a changed default fails."""
    from esreid.evaluation.protocols import distance_chunks

    rng = np.random.default_rng(7)
    centres = rng.normal(size=(6, 8))
    ids = rng.integers(0, 6, 40)
    x = (centres[ids] + 0.7 * rng.normal(size=(40, 8))).astype(np.float32)
    qf, gf = x[:8], x[8:]
    chunks = distance_chunks(torch.from_numpy(qf), torch.from_numpy(gf), metric="cosine", rerank=True)
    chunks.plan()
    got = np.concatenate([d.numpy().copy() for _, _, d in chunks])
    np.testing.assert_allclose(np.asarray(got), brute_force(qf, gf, 20, 6, 0.3, "cosine"), atol=2e-6)
    for k1, k2, lam in [(20, 6, 0.5), (19, 6, 0.3), (20, 5, 0.3)]:
        assert np.abs(brute_force(qf, gf, k1, k2, lam, "cosine") - np.asarray(got)).max() > 1e-3


def test_a_budget_that_cannot_hold_the_fixed_part_is_refused_before_any_work(monkeypatch):
    """Today the chunks alone are sized to the budget and the dense output, the neighbour tables and the sparse V come
    on top (5-10x the budget at small budgets, benchmarks/eval_memory.py --rerank); now what re-ranking holds
    whatever its chunks is set aside first, and a budget that cannot hold it is one line before any distance."""
    import esreid.evaluation.rerank as rerank

    rng = np.random.default_rng(5)
    qf, gf = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(1200, 8)).astype(np.float32)
    monkeypatch.setattr(rerank, "_neighbours", lambda *a: pytest.fail("distances computed"))
    with pytest.raises(ValueError) as e:
        re_ranking(qf, gf, memory_budget_mb=4)
    assert isinstance(e.value, rerank.RerankMemoryError)  # an EsreidError: one line, exit 2
    fixed = rerank.fixed_bytes(300, 1200)
    assert fixed["output"] == 300 * 1200 * 4
    need = (sum(fixed.values()) + rerank.MIN_CHUNK * rerank.row_bytes(1500, 20)) / 2**20
    assert str(e.value) == (f"re-ranking 300 queries against 1200 gallery images needs about {need:.0f} MB (the 300 "
                            "x 1200 re-ranked distance matrix alone is 1 MB), more than memory_budget_mb=4")
    assert rerank.working_bytes(300, 1200, need + 1) >= rerank.MIN_CHUNK * rerank.row_bytes(1500, 20)
