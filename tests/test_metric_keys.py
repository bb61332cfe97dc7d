"""The protocols' declared metrics: mRR (added by one declaration) against a hand-worked example, and the readers
(config check, console line, report table) taking the names from the declaration."""

from __future__ import annotations

import numpy as np
import pytest

from esreid.config import ConfigError, load_config
from esreid.evaluation.metric_keys import MetricKey, MetricKeys, declared, format_metrics, reported
from esreid.evaluation.protocols import PROTOCOLS
from esreid.viz.report import RunSummary, metrics_table

# 1-D features on a line: gallery g0..g3 at 0, 1, 2, 3 (pid 1 cam 0, pid 2 cam 1, pid 1 cam 1, pid 3 cam 0)
GF, G_PIDS, G_CAMS = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([1, 2, 1, 3]), np.array([0, 1, 1, 0])
# q0 at 0 (pid 1, cam 0): g0 is junk (same pid and camera); kept g1 (neg), g2 (pos), g3: first hit at rank 2
# q1 at 1 (pid 2, cam 0): g1 at distance 0: first hit at rank 1
# q2 at 3 (pid 3, cam 0): its only item g3 is junk: skipped
QF, Q_PIDS, Q_CAMS = np.array([[0.0], [1.0], [3.0]]), np.array([1, 2, 3]), np.array([0, 0, 0])


def test_mrr_of_the_hand_worked_example():
    out = PROTOCOLS.get("market")(QF, Q_PIDS, Q_CAMS, GF, G_PIDS, G_CAMS, metric="euclidean", ranks=(1, 2))
    assert out["num_valid_q"] == 2 and out["num_skipped_q"] == 1
    assert out["R1"] == 0.5 and out["R2"] == 1.0
    assert out["mRR"] == pytest.approx((1 / 2 + 1 / 1) / 2)  # not the mean over all 3 queries (0.5), not R1 (0.5)


def test_every_ranking_protocol_reports_every_declared_key():
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(6, 4)), rng.normal(size=(12, 4))
    qp, gp = rng.integers(0, 3, 6), rng.integers(0, 3, 12)
    qc, gc = np.zeros(6, int), np.ones(12, int)
    for name in PROTOCOLS.names():
        options = {"trials": 2} if name == "vehicleid" else {}
        out = PROTOCOLS.get(name)(qf, qp, qc, gf, gp, gc, ranks=(1, 5), **options)
        assert {m.key for m in declared(name).expand((1, 5))} <= set(out), name


def test_expand_and_present():
    keys = MetricKeys((MetricKey("mAP", "mAP", curve=True), MetricKey("R{k}", "Rank-{k}", curve=True),
                       MetricKey("err", "error", higher_is_better=False, percent=False)))
    assert [(m.key, m.label, m.curve) for m in keys.expand([1, 5])] == [
        ("mAP", "mAP", True), ("R1", "Rank-1", True), ("R5", "Rank-5", False), ("err", "error", False)]
    found = keys.present({"R10": 0.5, "R2": 0.25, "err": 0.125, "R1x": 1.0, "loss": 2.0})
    assert [m.key for m in found] == ["R2", "R10", "err"]  # absent and non-matching keys left out, ranks in order
    assert found[2].show(0.125) == "0.125" and found[0].show(0.25, 0.01) == "25.0±1.0"
    assert found[2].improves(0.1, 0.125) and not found[0].improves(0.1, 0.125)


def test_checkpoint_best_accepts_exactly_the_declared_keys():
    assert load_config(None, ["checkpoint.best=mRR"]).checkpoint.best == "mRR"
    with pytest.raises(ConfigError, match=r"expected one of mAP, mINP, R1, R5, R10, R20, mRR \(a metric protocol "
                                          r"'market' reports.*got 'num_valid_q'"):
        load_config(None, ["checkpoint.best=num_valid_q"])  # in the results, but not a declared metric


def test_console_and_report_show_the_declared_metrics():
    metrics = {"protocol": "vehicleid", "mAP": 0.5, "mAP_std": 0.01, "mINP": 0.25, "R1": 0.75, "R5": 0.875,
               "mRR": 0.625, "mRR_std": 0.02, "num_queries": [3], "eval_seconds": 1.0}
    assert format_metrics(metrics, "eval") == "eval: mAP 50.0±1.0  mINP 25.0  R1 75.0  R5 87.5  mRR 62.5±2.0"
    assert format_metrics({**metrics, "R5": float("nan")}) == "mAP 50.0±1.0  mINP 25.0  R1 75.0  mRR 62.5±2.0"
    assert [m.key for m in reported({k: v for k, v in metrics.items() if k != "protocol"})] == [
        "mAP", "mINP", "R1", "R5", "mRR"]  # results written before they named the protocol: market's keys
    table = metrics_table([RunSummary("run", metrics)])
    assert '<th>mRR (%)</th>' in table and 'data-metric="mRR" data-value="0.625" data-std="0.02">62.5 ± 2.0' in table
    assert "eval_seconds" not in table and "num_queries" not in table
