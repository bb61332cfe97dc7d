"""Plots of a run: which panels and series the records give (the data drawn), and that the PNGs render."""

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from esreid.files import read_jsonl
from esreid.viz.plots import (
    branch_of,
    cmc_panel,
    group_loss_terms,
    moving_average,
    plot_cmc,
    plot_panels,
    plot_training,
    training_panels,
)


def esnet_records(erased_loss=True):
    """Two epochs of 4 iterations of an ES-Net run as the trainer logs them (log_period 2, eval after epoch 2)."""
    records = []
    for epoch in (1, 2):
        for it in (2, 4):
            step = (epoch - 1) * 4 + it
            r = {"type": "train", "epoch": epoch, "iter": step, "lr": 1e-4 * step, "aib_ce": 10.0 - step,
                 "aib_triplet": 1.0 / step, "esb_ce": 20.0 - step, "esb_triplet": 2.0 / step}
            r["loss"] = r["aib_ce"] + r["aib_triplet"] + r["esb_ce"] + r["esb_triplet"]
            if erased_loss:
                r["erased_loss"] = 1.5 * r["loss"]
            records.append(r)
        records.append({"type": "epoch", "epoch": epoch, "seconds": 3.0, "images_per_second": 100.0, "lr": 4e-4,
                        "aib_ce": 9.0, "aib_triplet": 0.5, "esb_ce": 19.0, "esb_triplet": 1.0, "loss": 29.5,
                        "erased_fraction": 0.25 * epoch, "saliency_mean": 0.1 * epoch, "esb_l": 3.0 + epoch})
    records.append({"type": "eval", "epoch": 2, "mAP": 0.5, "R1": 0.625, "R5": 0.9, "mINP": 0.2, "eval_seconds": 1.0})
    return records


def by_key(panels):
    return {p.key: p for p in panels}


def test_loss_terms_are_grouped_by_the_prefix_before_the_last_underscore():
    keys = ["type", "epoch", "iter", "lr", "loss", "erased_loss", "seconds", "images_per_second",
            "aib_ce", "aib_triplet", "esb_ce", "esb_triplet",  # ES-Net
            "global_ce", "global_triplet", "drop_ce", "drop_triplet",  # BDB
            "s1_ce", "s2_ce", "s1_triplet",  # PMM stages
            "b1_ce", "b1_erased_ce",  # AELM: the erased classifier is its own group
            "ce", "triplet",  # baseline: no prefix
            "esb_l", "aib_l", "pool_p", "erased_fraction", "saliency_mean"]  # model stats, not losses
    assert group_loss_terms(keys) == {
        "aib": ["aib_ce", "aib_triplet"], "esb": ["esb_ce", "esb_triplet"],
        "global": ["global_ce", "global_triplet"], "drop": ["drop_ce", "drop_triplet"],
        "s1": ["s1_ce", "s1_triplet"], "s2": ["s2_ce"], "b1": ["b1_ce"], "b1_erased": ["b1_erased_ce"],
        "": ["ce", "triplet"],
    }
    assert branch_of("s1_erased_ce") == "s1_erased" and branch_of("ce") == ""


def test_training_panels_carry_the_logged_values():
    panels = training_panels(esnet_records())
    assert [p.key for p in panels] == ["loss/aib", "loss/esb", "loss/total", "lr", "exponent", "erased_fraction",
                                       "saliency_mean", "eval", "erased_loss"]
    p = by_key(panels)
    iters = [2.0, 4.0, 6.0, 8.0]
    aib = {s.label: s for s in p["loss/aib"].series}
    assert set(aib) == {"aib_ce", "aib_triplet"} and p["loss/aib"].xlabel == "iteration"
    assert aib["aib_ce"].x == iters and aib["aib_ce"].y == [8.0, 6.0, 4.0, 2.0]  # train records, not epoch means
    assert p["lr"].series[0].y == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4])
    assert p["exponent"].series[0].label == "esb_l" and p["exponent"].series[0].y == [4.0, 5.0]
    assert p["exponent"].xlabel == "epoch" and p["erased_fraction"].series[0].y == [0.25, 0.5]
    evals = {s.label: (s.x, s.y) for s in p["eval"].series}
    assert evals == {"mAP": ([2.0], [50.0]), "R1": ([2.0], [62.5])}  # in %
    fig3 = {s.label: s.y for s in p["erased_loss"].series}
    total = p["loss/total"].series[0].y
    assert fig3["original images"] == total and fig3["BESM-erased copies"] == pytest.approx([1.5 * t for t in total])


def test_missing_keys_are_skipped():
    # no erased_loss: no Fig. 3 panel (the total loss alone must not make one)
    assert "erased_loss" not in by_key(training_panels(esnet_records(erased_loss=False)))
    # only evaluations
    assert [p.key for p in training_panels([{"type": "eval", "epoch": 1, "mAP": 0.1}])] == ["eval"]
    # no train records (log_period 0): loss terms and lr come from the epoch means, against epochs
    epochs = [r for r in esnet_records() if r["type"] == "epoch"]
    p = by_key(training_panels(epochs))
    assert p["loss/aib"].xlabel == "epoch" and p["loss/aib"].series[0].x == [1.0, 2.0]
    assert "eval" not in p and "erased_loss" not in p
    # non-numeric, NaN and missing values are dropped point by point; a baseline without stats has no stats panels
    recs = [{"type": "train", "iter": 1, "ce": 2.0, "lr": float("nan")}, {"type": "train", "iter": 2, "ce": None},
            {"type": "train", "iter": 3, "ce": 1.0, "flag": True}]
    p = by_key(training_panels(recs))
    assert list(p) == ["loss/terms"] and p["loss/terms"].series[0].x == [1.0, 3.0]
    assert plot_training([]) is None and plot_training([{"type": "epoch", "epoch": 1}]) is None


def test_read_jsonl_skips_a_line_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = esnet_records()
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '[1, 2]\n{"type": "train", "ep')
    assert read_jsonl(str(path)) == records  # the list line and the cut line skipped
    assert read_jsonl(str(tmp_path / "missing.jsonl")) == []


def test_cmc_panel():
    cmc = [0.5 + 0.01 * i for i in range(60)]
    p = cmc_panel({"A": cmc, "B": [0.25, 1.0], "empty": []}, max_rank=50)
    a, b = p.series
    assert a.x == list(range(1, 51)) and a.y == pytest.approx([100 * v for v in cmc[:50]])
    assert a.label == "A (R1 50.0, R5 54.0, R10 59.0)" and b.label == "B (R1 25.0)"
    assert p.ylim[0] <= 25.0 and p.mark_x == (1, 5, 10, 20)
    assert cmc_panel({"empty": []}) is None and plot_cmc({}) is None


def test_moving_average_matches_the_definition():
    y = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    for window in (1, 2, 3, 4):
        want = [np.mean(y[max(0, i - window // 2):min(len(y), i + window - window // 2)]) for i in range(len(y))]
        assert moving_average(y, window) == pytest.approx(want)


def decode(png):
    with Image.open(io.BytesIO(png)) as img:
        img.load()
        return img.convert("RGB")


def colour_pixels(img, rgb, tol=12):
    a = np.asarray(img).astype(int)
    return int((np.abs(a - np.array(rgb)).max(axis=2) <= tol).sum())


BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's first two line colours


def test_figures_render_with_one_axes_per_panel():
    full = decode(plot_training(esnet_records()))  # 9 panels: 3 x 3
    lr_only = decode(plot_panels([by_key(training_panels(esnet_records()))["lr"]]))
    assert 3 * 400 < full.width < 3 * 520 and 3 * 260 < full.height < 3 * 340
    assert 400 < lr_only.width < 520 and 260 < lr_only.height < 340
    one = decode(plot_cmc({"A": [0.5, 0.75, 1.0]}))
    two = decode(plot_cmc({"A": [0.5, 0.75, 1.0], "B": [0.25, 0.5, 1.0]}))
    assert colour_pixels(one, BLUE) > 50 and colour_pixels(one, ORANGE) == 0
    assert colour_pixels(two, ORANGE) > 50  # the second model's curve is drawn
    assert plot_panels([None]) is None


def test_long_series_are_smoothed_but_short_ones_are_not():
    n = 400
    recs = [{"type": "train", "iter": i, "ce": 1.0 + math.sin(i), "lr": 0.1} for i in range(1, n + 1)]
    p = by_key(training_panels(recs))
    assert p["loss/terms"].smooth and not p["lr"].smooth
    assert decode(plot_training(recs)).width > 0
