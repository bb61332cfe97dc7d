"""Protocols against literal per-query computations that use the same seeded draws."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_metrics import brute_force, layouts

from esreid.evaluation.distance import pairwise_distance
from esreid.evaluation.metrics import evaluate_rank
from esreid.evaluation.protocols import PROTOCOLS
from esreid.evaluation.rerank import re_ranking


def problem(seed, nq=15, ng=50, ids=8, cams=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, 6))
    q_pids, g_pids = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
    qf = (centres[q_pids] + rng.normal(size=(nq, 6))).astype(np.float32)
    gf = (centres[g_pids] + rng.normal(size=(ng, 6))).astype(np.float32)
    return qf, q_pids, rng.integers(0, cams, nq), gf, g_pids, rng.integers(0, cams, ng)


def test_registry_names():
    assert PROTOCOLS.names() == ["cuhk03_sgs", "market", "vehicleid"]


@pytest.mark.parametrize("rerank", [False, True])
def test_market_equals_evaluate_rank(rerank):
    qf, qp, qc, gf, gp, gc = problem(0)
    out = PROTOCOLS.get("market")(qf, qp, qc, gf, gp, gc, metric="euclidean", ap_mode="official", rerank=rerank,
                                  ranks=[1, 5], chunk_size=4)
    dist = re_ranking(qf, gf, metric="euclidean") if rerank else pairwise_distance(qf, gf, "euclidean")
    want = evaluate_rank(qp, gp, qc, gc, distmat=dist, ap_mode="official")
    cmc = brute_force(dist.numpy(), qp, gp, qc, gc, 50)[0]  # CMC(r) = [k_1 <= r], r = 1..50 (all 50 gallery ranks)
    mrr = float(np.sum(np.diff(np.r_[0.0, cmc]) / np.arange(1, 51)))  # the fraction of first hits at r, over r
    assert out == {**want.as_dict((1, 5)), "mRR": pytest.approx(mrr), "cmc": want.cmc.tolist(),
                   "num_valid_q": want.num_valid_q, "num_skipped_q": want.num_skipped_q}
    assert out["cmc"] == cmc.tolist()
    json.dumps(out)


def sgs_brute_force(dist, qp, qc, gp, gc, repeats, seed):
    """Per draw and query: one random kept image per pid, ranked; the CMC curve (ranks 1..50) over all of them."""
    hits = []
    for r in range(repeats):
        u = np.random.default_rng(seed + r).random(len(gp))
        for q in range(len(qp)):
            kept = [g for g in range(len(gp)) if not (gp[g] == qp[q] and gc[g] == qc[q])]
            if not any(gp[g] == qp[q] for g in kept):
                continue
            drawn = [min((g for g in kept if gp[g] == pid), key=lambda g: u[g]) for pid in {gp[g] for g in kept}]
            ranked = sorted(drawn, key=lambda g: (dist[q, g], g))
            hits.append(next(i for i, g in enumerate(ranked, 1) if gp[g] == qp[q]))
    hits = np.array(hits).reshape(repeats, -1)
    return [float(np.mean([np.mean(h <= k) for h in hits])) for k in range(1, 51)]


@pytest.mark.parametrize("seed", [1, 2])
def test_cuhk03_single_gallery_shot(seed):
    qf, qp, qc, gf, gp, gc = problem(seed, cams=2)
    dist = pairwise_distance(qf, gf).double().numpy()
    out = PROTOCOLS.get("cuhk03_sgs")(qf, qp, qc, gf, gp, gc, metric="cosine", ap_mode="anchor", rerank=False,
                                      ranks=[1, 2, 5], num_repeats=4, seed=seed, chunk_size=6)
    curve = sgs_brute_force(dist, qp, qc, gp, gc, 4, seed)
    assert out["cmc"] == pytest.approx(curve, abs=1e-12) and len(out["cmc"]) == 50
    for k in (1, 2, 5):
        assert out[f"R{k}"] == pytest.approx(curve[k - 1], abs=1e-12)
    full = evaluate_rank(qp, gp, qc, gc, distmat=dist)
    assert (out["mAP"], out["mINP"]) == pytest.approx((full.mAP, full.mINP))  # AP on the full list
    assert out["R1"] <= out["R2"] <= out["R5"] and out["R1"] > full.cmc[0]  # one image per pid: easier than full
    json.dumps(out)


def test_vehicleid_trials():
    rng = np.random.default_rng(3)
    pids = np.repeat(np.arange(12), rng.integers(1, 5, 12))  # some ids have a single image: gallery only
    centres = rng.normal(size=(12, 6))
    feats = (centres[pids] + 0.8 * rng.normal(size=(len(pids), 6))).astype(np.float32)
    same_cam = np.zeros(len(pids), np.int64)  # all "camera 0": must not create junk
    out = PROTOCOLS.get("vehicleid")(feats, pids, same_cam, np.zeros((0, 6), np.float32), [], [],
                                     metric="cosine", ap_mode="anchor", rerank=False, ranks=[1, 5], trials=3,
                                     base_seed=7)
    assert out["trials"] == 3 and out["seeds"] == [7, 8, 9]
    per_trial, curves = [], []
    for seed in out["seeds"]:
        u = np.random.default_rng(seed).random(len(pids))
        gal = [min(np.flatnonzero(pids == p), key=lambda i: u[i]) for p in np.unique(pids)]
        qry = [i for i in range(len(pids)) if i not in gal]
        r = evaluate_rank(pids[qry], pids[gal], np.zeros(len(qry), int), np.ones(len(gal), int),
                          qf=feats[qry], gf=feats[gal])
        per_trial.append([r.cmc[0], r.cmc[4], r.mAP])
        curves.append(brute_force(pairwise_distance(feats[qry], feats[gal]).numpy(), pids[qry], pids[gal],
                                  np.zeros(len(qry)), np.ones(len(gal)), 50)[0])
    per_trial = np.array(per_trial)
    assert [out["R1"], out["R5"], out["mAP"]] == pytest.approx(per_trial.mean(0).tolist())
    assert out["cmc"] == pytest.approx(np.mean(curves, 0).tolist(), abs=1e-12)  # mean curve over the trials
    assert [out["R1_std"], out["R5_std"], out["mAP_std"]] == pytest.approx(per_trial.std(0).tolist())
    assert out["mAP_std"] > 0  # the trials draw different galleries
    json.dumps(out)


def test_unknown_option_is_named():
    qf, qp, qc, gf, gp, gc = problem(4)
    with pytest.raises(TypeError, match="num_trials"):
        PROTOCOLS.get("market")(qf, qp, qc, gf, gp, gc, metric="cosine", ap_mode="anchor", rerank=False,
                                ranks=[1], num_trials=3)
    with pytest.raises(KeyError, match="unknown protocol"):
        PROTOCOLS.get("duke")


def test_features_on_torch_and_half_precision():
    qf, qp, qc, gf, gp, gc = problem(5)
    a = PROTOCOLS.get("market")(torch.from_numpy(qf).half(), qp, qc, torch.from_numpy(gf).half(), gp, gc,
                                metric="cosine", ap_mode="anchor", rerank=False, ranks=[1])
    dist = pairwise_distance(torch.from_numpy(qf).half(), torch.from_numpy(gf).half())
    assert a["mAP"] == evaluate_rank(qp, gp, qc, gc, distmat=dist).mAP


@pytest.mark.parametrize("name", ["market", "cuhk03_sgs", "vehicleid"])
def test_protocols_take_features_of_any_layout(name):
    qf, qp, qc, gf, gp, gc = problem(6)
    kwargs = dict(metric="cosine", ap_mode="anchor", rerank=False, ranks=[1, 5])
    want = PROTOCOLS.get(name)(qf, qp, qc, gf, gp, gc, **kwargs)
    for (layout, q), g in zip(layouts(qf).items(), layouts(gf).values()):
        assert PROTOCOLS.get(name)(q, qp, qc, g, gp, gc, chunk_size=4, **kwargs) == want, layout
    with pytest.raises(ValueError, match="gf: expected floating-point features"):
        PROTOCOLS.get(name)(qf, qp, qc, gf.astype(np.int64), gp, gc, **kwargs)
