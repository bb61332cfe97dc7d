"""Protocols against literal per-query computations that use the same seeded draws."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

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
    assert out == {**want.as_dict((1, 5)), "num_valid_q": want.num_valid_q, "num_skipped_q": want.num_skipped_q}
    json.dumps(out)


def sgs_brute_force(dist, qp, qc, gp, gc, ranks, repeats, seed):
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
    hits = np.array(hits)
    return {f"R{k}": float(np.mean(hits <= k)) for k in ranks}


@pytest.mark.parametrize("seed", [1, 2])
def test_cuhk03_single_gallery_shot(seed):
    qf, qp, qc, gf, gp, gc = problem(seed, cams=2)
    dist = pairwise_distance(qf, gf).double().numpy()
    out = PROTOCOLS.get("cuhk03_sgs")(qf, qp, qc, gf, gp, gc, metric="cosine", ap_mode="anchor", rerank=False,
                                      ranks=[1, 2, 5], num_repeats=4, seed=seed, chunk_size=6)
    want = sgs_brute_force(dist, qp, qc, gp, gc, [1, 2, 5], 4, seed)
    for k in want:
        assert out[k] == pytest.approx(want[k], abs=1e-12)
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
    per_trial = []
    for seed in out["seeds"]:
        u = np.random.default_rng(seed).random(len(pids))
        gal = [min(np.flatnonzero(pids == p), key=lambda i: u[i]) for p in np.unique(pids)]
        qry = [i for i in range(len(pids)) if i not in gal]
        r = evaluate_rank(pids[qry], pids[gal], np.zeros(len(qry), int), np.ones(len(gal), int),
                          qf=feats[qry], gf=feats[gal])
        per_trial.append([r.cmc[0], r.cmc[4], r.mAP])
    per_trial = np.array(per_trial)
    assert [out["R1"], out["R5"], out["mAP"]] == pytest.approx(per_trial.mean(0).tolist())
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
