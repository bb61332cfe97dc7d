"""The chunked evaluator against a literal per-query computation of the definitions (docs/methods.md §0) (float64)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esreid.evaluation import metrics
from esreid.evaluation.distance import pairwise_distance, smallest_k
from esreid.evaluation.metrics import evaluate_rank


def brute_force(dist, q_pids, g_pids, q_cams, g_cams, max_rank, official=False):
    """One query at a time, straight from docs/methods.md §0 (evaluation protocol): stable argsort, drop junk, read the
    hit ranks."""
    cmc_sum, aps, inps, skipped = np.zeros(max_rank), [], [], 0
    for q in range(len(q_pids)):
        order = sorted(range(len(g_pids)), key=lambda g: (float(dist[q, g]), g))
        kept = [g for g in order if not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])]
        ks = [r + 1 for r, g in enumerate(kept) if g_pids[g] == q_pids[q]]
        if not ks:
            skipped += 1
            continue
        cmc_sum += np.arange(1, max_rank + 1) >= ks[0]
        if official:
            aps.append(np.mean([((i - 1) / (k - 1) if k > 1 else 1.0) / 2 + i / k / 2 for i, k in enumerate(ks, 1)]))
        else:
            aps.append(np.mean([i / k for i, k in enumerate(ks, 1)]))
        inps.append(len(ks) / ks[-1])
    n = len(aps)
    if n == 0:
        return None
    return cmc_sum / n, float(np.mean(aps)), float(np.mean(inps)), n, skipped


@st.composite
def problems(draw):
    nq, ng = draw(st.integers(1, 12)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_ids, n_cams = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    g_pids = rng.integers(0, n_ids, ng)  # pid 0 plays the Market distractors: an ordinary id for the protocol
    q_pids = rng.integers(0, n_ids + 1, nq)  # pid n_ids is never in the gallery: queries without positives
    g_cams, q_cams = rng.integers(0, n_cams, ng), rng.integers(0, n_cams, nq)
    levels = draw(st.integers(1, 6))  # few distinct distance values -> many ties
    dist = rng.integers(0, levels, (nq, ng)).astype(np.float64) / levels
    if draw(st.booleans()):
        dist += rng.random((nq, ng))
    dist -= draw(st.sampled_from([0.0, 0.5]))  # negative values exercise the float-bits sort key
    dist[dist == 0] = draw(st.sampled_from([0.0, -0.0]))  # -0.0 ties with +0.0
    if draw(st.booleans()):  # infinite distances rank last (+inf) or first (-inf), ties among them by index
        dist[rng.random((nq, ng)) < 0.1] = np.inf
        dist[rng.random((nq, ng)) < 0.05] = -np.inf
    dist = dist.astype(draw(st.sampled_from([np.float64, np.float32])))
    chunk = draw(st.integers(1, nq + 2))
    return dist, q_pids, g_pids, q_cams, g_cams, chunk


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.sampled_from(["anchor", "official"]), st.sampled_from([1, 3, 2**40]))
def test_matches_brute_force(problem, ap_mode, max_candidates):
    """Any chunking and any candidate-group size (1: one query at a time, as for pathological rows) is exact."""
    dist, q_pids, g_pids, q_cams, g_cams, chunk = problem
    want = brute_force(dist, q_pids, g_pids, q_cams, g_cams, 8, official=ap_mode == "official")
    plan = metrics.DistanceChunks.plan

    def small_groups(self, *args, **kwargs):
        plan(self, *args, **kwargs)
        self.max_candidates = max_candidates

    with mock.patch.object(metrics.DistanceChunks, "plan", small_groups):
        if want is None:  # every query skipped
            with pytest.raises(ValueError, match="no query has a matching"):
                evaluate_rank(q_pids, g_pids, q_cams, g_cams, distmat=dist, max_rank=8, ap_mode=ap_mode,
                              chunk_size=chunk)
            return
        got = evaluate_rank(q_pids, g_pids, q_cams, g_cams, distmat=dist, max_rank=8, ap_mode=ap_mode,
                            chunk_size=chunk)
    np.testing.assert_allclose(got.cmc, want[0], atol=1e-12)
    assert got.mAP == pytest.approx(want[1], abs=1e-12)
    assert got.mINP == pytest.approx(want[2], abs=1e-12)
    assert (got.num_valid_q, got.num_skipped_q) == (want[3], want[4])


def test_hand_worked_example():
    # kept ranking for the query (pid 1, cam 0): g3 (neg), g1 (pos), g0 is junk (pid 1, cam 0), g2 (neg), g4 (pos)
    dist = np.array([[0.0, 0.2, 0.3, 0.1, 0.4]])
    g_pids, g_cams = np.array([1, 1, 2, 0, 1]), np.array([0, 1, 0, 0, 2])
    r = evaluate_rank([1], g_pids, [0], g_cams, distmat=dist, max_rank=4)
    np.testing.assert_allclose(r.cmc, [0, 1, 1, 1])
    assert r.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)  # hits at kept ranks 2 and 4
    assert r.mINP == pytest.approx(2 / 4)
    off = evaluate_rank([1], g_pids, [0], g_cams, distmat=dist, max_rank=4, ap_mode="official")
    assert off.mAP == pytest.approx(((0 / 1 + 1 / 2) / 2 + (1 / 3 + 2 / 4) / 2) / 2)
    assert r.as_dict((1, 2)) == {"mAP": r.mAP, "mINP": r.mINP, "R1": 0.0, "R2": 1.0}


def test_ties_break_by_gallery_index():
    dist = np.zeros((1, 3))  # all tied: kept order is g0, g1, g2
    r = evaluate_rank([5], [7, 5, 5], [0], [1, 1, 1], distmat=dist, max_rank=3)
    assert r.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
    np.testing.assert_allclose(r.cmc, [0, 1, 1])


def clustered(seed, nq, ng, ids, dim, cams=3):
    """Float64 features ``(nq, dim)``, ``(ng, dim)``: a centre per id plus unit noise; and (q/g pids, q/g cameras)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    q_pids, g_pids = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
    qf, gf = centres[q_pids] + rng.normal(size=(nq, dim)), centres[g_pids] + rng.normal(size=(ng, dim))
    return qf, gf, (q_pids, g_pids, rng.integers(0, cams, nq), rng.integers(0, cams, ng))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_features_path_equals_distmat_path(metric, dtype):
    qf, gf, (q_pids, g_pids, q_cams, g_cams) = clustered(0, 23, 60, 10, 16)
    qf, gf = torch.tensor(qf, dtype=dtype), torch.tensor(gf, dtype=dtype)
    dist = pairwise_distance(qf, gf, metric)
    assert dist.dtype == torch.float32
    q64, g64 = qf.double().numpy(), gf.double().numpy()
    if metric == "cosine":
        ref = 1 - (q64 / np.linalg.norm(q64, axis=1, keepdims=True)) @ (g64 / np.linalg.norm(g64, axis=1)[:, None]).T
    else:
        ref = ((q64[:, None, :] - g64[None]) ** 2).sum(-1)
    np.testing.assert_allclose(dist.numpy(), ref, rtol=1e-4, atol=1e-4)
    a = evaluate_rank(q_pids, g_pids, q_cams, g_cams, qf=qf, gf=gf, metric=metric, chunk_size=5)
    b = evaluate_rank(q_pids, g_pids, q_cams, g_cams, distmat=dist, max_rank=50)
    want = brute_force(dist.numpy(), q_pids, g_pids, q_cams, g_cams, 50)
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert (a.mAP, a.mINP) == (b.mAP, b.mINP)
    assert a.mAP == pytest.approx(want[1], abs=1e-12) and a.mINP == pytest.approx(want[2], abs=1e-12)


def test_memory_budget_sets_chunking_without_changing_results():
    rng = np.random.default_rng(1)
    dist = rng.random((50, 300)).astype(np.float32)
    args = (rng.integers(0, 20, 50), rng.integers(0, 20, 300), rng.integers(0, 2, 50), rng.integers(0, 2, 300))
    tiny = evaluate_rank(*args, distmat=dist, memory_budget_mb=0.06)  # 1 query per chunk
    whole = evaluate_rank(*args, distmat=dist, chunk_size=50)
    np.testing.assert_array_equal(tiny.cmc, whole.cmc)
    assert tiny.mAP == whole.mAP


def test_bad_input_errors():
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_rank([1], [1, 2], [0], [0], distmat=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="either distmat"):
        evaluate_rank([1], [1], [0], [0])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank([1], [1], [0], [1], distmat=np.full((1, 1), np.nan))
    with pytest.raises(ValueError, match="no query has a matching"):  # an empty gallery
        evaluate_rank([1], [], [0], [], qf=np.ones((1, 3)), gf=np.ones((0, 3)))
    with pytest.raises(KeyError, match="ap_mode"):
        evaluate_rank([1], [1], [0], [1], distmat=np.zeros((1, 1)), ap_mode="trapz")
    with pytest.raises(ValueError, match="rank 20"):
        evaluate_rank([1], [1], [0], [1], distmat=np.zeros((1, 1)), max_rank=10).as_dict()


def test_smallest_k_ties_by_index():
    d = torch.tensor([[0.5, 0.1, 0.5, 0.1, 0.9], [1.0, 1.0, 1.0, 1.0, 1.0]])
    assert smallest_k(d, 3).tolist() == [[1, 3, 0], [0, 1, 2]]


def layouts(x: np.ndarray):
    """``x`` (C-contiguous numpy) re-laid out every way a caller may hand it over; each yields the same values."""
    wide = np.zeros((x.shape[0], x.shape[1] + 7), x.dtype)
    wide[:, 7:] = x
    flipped = np.ascontiguousarray(x[::-1, ::-1])
    t = torch.from_numpy(x)
    as_list = {"list": x.tolist()} if x.dtype in (np.float64, np.int64) else {}  # lists come in as float64 / int64
    return {**as_list,
        "column slice": wide[:, 7:],  # e.g. the query x gallery block of a re-ranked (Nq + Ng)-wide matrix
        "row step": np.repeat(x, 2, axis=0)[::2],
        "transpose": np.ascontiguousarray(x.T).T,
        "fortran": np.asfortranarray(x),
        "negative strides": np.flip(flipped),
        "big-endian": x.astype(x.dtype.newbyteorder(">")),
        "torch transpose": t.T.contiguous().T,
        "torch column slice": torch.from_numpy(wide)[:, 7:],
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64])
def test_distmat_of_any_layout_gives_the_contiguous_result(dtype):
    rng = np.random.default_rng(5)
    dist = (rng.integers(0, 9, (13, 40)) if dtype == np.int64 else rng.random((13, 40)) * 2 - 1).astype(dtype)
    args = (rng.integers(0, 6, 13), rng.integers(0, 6, 40), rng.integers(0, 2, 13), rng.integers(0, 2, 40))
    want = evaluate_rank(*args, distmat=dist, ap_mode="official")
    ref = brute_force(dist.astype(np.float64), *args, 50, official=True)  # half -> float64 is exact
    np.testing.assert_array_equal(want.cmc, ref[0])
    assert want.mAP == pytest.approx(ref[1], abs=1e-12) and want.mINP == pytest.approx(ref[2], abs=1e-12)
    for name, layout in layouts(dist).items():
        got = evaluate_rank(*args, distmat=layout, ap_mode="official", chunk_size=4)  # chunk by chunk
        assert (got.cmc.tolist(), got.mAP, got.mINP) == (want.cmc.tolist(), want.mAP, want.mINP), name


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_features_of_any_layout_give_the_contiguous_result(metric, dtype):
    qf, gf, args = clustered(6, 11, 70, 6, 24)
    qf, gf = qf.astype(dtype), gf.astype(dtype)
    want = evaluate_rank(*args, qf=qf, gf=gf, metric=metric)
    dist = pairwise_distance(qf, gf, metric)
    assert dist.dtype == (torch.float64 if dtype == np.float64 else torch.float32)
    for (name, q), g in zip(layouts(qf).items(), layouts(gf).values()):
        got = evaluate_rank(*args, qf=q, gf=g, metric=metric, chunk_size=4)
        assert (got.cmc.tolist(), got.mAP, got.mINP) == (want.cmc.tolist(), want.mAP, want.mINP), name
        assert torch.equal(pairwise_distance(q, g, metric), dist), name


def test_bfloat16_features_equal_their_float32_values():
    rng = np.random.default_rng(7)
    qf, gf = torch.randn(9, 16).bfloat16(), torch.randn(30, 16).bfloat16()
    args = (rng.integers(0, 4, 9), rng.integers(0, 4, 30), rng.integers(0, 2, 9), rng.integers(0, 2, 30))
    a = evaluate_rank(*args, qf=qf.T.contiguous().T, gf=gf[:, :], chunk_size=2)
    b = evaluate_rank(*args, qf=qf.float().numpy(), gf=gf.float().numpy())
    assert (a.cmc.tolist(), a.mAP, a.mINP) == (b.cmc.tolist(), b.mAP, b.mINP)


@pytest.mark.parametrize("kwargs,match", [
    (dict(distmat=np.zeros((2, 3), bool)), "distmat: expected a float .* or integer distance matrix, got dtype bool"),
    (dict(distmat=np.zeros((2, 3), complex)), "distmat: expected a float .* got dtype complex128"),
    (dict(distmat=torch.zeros(2, 3, dtype=torch.complex64)), "distmat: expected a float .* got dtype torch.complex64"),
    (dict(distmat=np.zeros(6)), r"distmat: expected a 2-D \(Nq, Ng\) distance matrix, got shape \(6,\)"),
    (dict(distmat=np.zeros((2, 3, 1))), "distmat: expected a 2-D"),
    (dict(distmat=np.array([["a", "b", "c"]] * 2)), "distmat: expected a float .* got dtype <U1"),
    (dict(qf=np.zeros((2, 4), np.int32), gf=np.ones((3, 4))), "qf: expected floating-point features"),
    (dict(qf=np.ones((2, 4)), gf=torch.ones(3, 4, dtype=torch.bool)), "gf: expected floating-point features"),
    (dict(qf=np.ones(4), gf=np.ones((3, 4))), r"qf: expected a 2-D \(N, D\) feature array"),
    (dict(qf=np.ones((2, 4)), gf=np.ones((3, 5))), "qf has dimension 4 but gf has 5"),
    (dict(qf=np.ones((2, 4), np.longdouble), gf=np.ones((3, 4))), "qf: expected floating-point features"),
    (dict(qf=np.ones((2, 4)), gf=np.array([[1.0, np.nan, 0, 0]] * 3)), "gf: rows 0..2 contain NaN or infinite"),
    (dict(qf=np.full((2, 4), np.inf), gf=np.ones((3, 4))), "qf: rows 0..1 contain NaN or infinite"),
    (dict(qf=np.full((2, 4), 1e30, np.float32), gf=np.ones((3, 4)), metric="euclidean"), "qf: .* squares overflow"),
    (dict(distmat=np.zeros((2, 3)), memory_budget_mb=1e-4), "memory_budget_mb=0.0001 cannot hold one query"),
    (dict(distmat=np.zeros((2, 3)), chunk_size=0), "chunk_size must be >= 1"),
])
def test_bad_inputs_raise_value_errors_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate_rank([1, 2], [1, 2, 3], [0, 0], [1, 1, 1], **kwargs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=30), st.integers(1, 12))
def test_candidate_groups_cover_the_rows_within_the_cap(counts, cap):
    """Row groups are consecutive, cover every row, and hold at most ``cap`` candidates unless a single row has more."""
    m = torch.zeros(len(counts), 9, dtype=torch.bool)
    for r, n in enumerate(counts):
        m[r, :n] = True
    groups = list(metrics._row_groups(metrics.dense_ops(m.device), m, cap))
    assert groups[0][0] == 0 and groups[-1][1] == len(counts)
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    for g0, g1 in groups:
        assert g1 - g0 == 1 or sum(counts[g0:g1]) <= cap
        assert g1 == len(counts) or sum(counts[g0 : g1 + 1]) > cap  # greedy: a group takes every row that fits


def test_torch_dense_steps_equal_numpy_ones():
    """Accelerators use the torch versions of the dense steps: run them here on CPU against the brute force."""
    rng = np.random.default_rng(8)
    dist = rng.integers(0, 5, (20, 60)).astype(np.float32) / 5  # ties
    args = (rng.integers(0, 7, 20), rng.integers(0, 7, 60), rng.integers(0, 2, 20), rng.integers(0, 2, 60))
    want = brute_force(dist, *args, 10)
    with mock.patch.object(metrics, "dense_ops", lambda device: metrics._TorchDense):
        got = evaluate_rank(*args, distmat=dist, max_rank=10, chunk_size=7)
    np.testing.assert_array_equal(got.cmc, want[0])
    assert (got.mAP, got.mINP) == pytest.approx(want[1:3], abs=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_gallery_prepared_block_by_block_when_it_does_not_fit(metric):
    """A prepared gallery over half the budget is prepared again per chunk, block by block: same ranking. The
    features make every distance exact in float32 whatever the GEMM blocking (cosine: 4 entries of +-1, so the
    normalised entries are +-0.5; euclidean: small integers), so the brute force on the full matrix is exact too."""
    rng = np.random.default_rng(9)

    def feats(n):
        if metric == "euclidean":
            return rng.integers(-3, 4, (n, 64)).astype(np.float32)
        x = np.zeros((n, 64), np.float32)
        np.put_along_axis(x, np.argsort(rng.random((n, 64)), 1)[:, :4], rng.choice([-1.0, 1.0], (n, 4)), 1)
        return x * 2.0 ** rng.integers(-3, 4, (n, 1))

    qf, gf = feats(40), np.asfortranarray(feats(3500))  # Fortran order: even euclidean must copy it to prepare it
    args = (rng.integers(0, 50, 40), rng.integers(0, 50, 3500), rng.integers(0, 3, 40), rng.integers(0, 3, 3500))
    chunks = metrics.DistanceChunks(qf=qf, gf=gf, metric=metric, memory_budget_mb=1.7)
    assert chunks.gallery is None and chunks.gallery_block < 3500  # not kept: several blocks
    got = evaluate_rank(*args, qf=qf, gf=gf, metric=metric, memory_budget_mb=1.7)
    want = brute_force(pairwise_distance(qf, gf, metric).numpy(), *args, 50)
    np.testing.assert_array_equal(got.cmc, want[0])
    assert (got.mAP, got.mINP) == pytest.approx(want[1:3], abs=1e-12)
