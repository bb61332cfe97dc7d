"""report.html and the comparison page: structure, metrics cells, self-containment, atomic writes; and the same page
opened in headless Chromium (tests/chromium.py): values rendered, every image decoded, a screenshot saved."""

import base64
import html.parser
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from esreid.viz import images as viz_images
from esreid.viz.plots import plot_cmc, plot_training
from esreid.viz.ranklist import Match, RankRow, draw_rank_grid
from esreid.viz.report import (
    RunSummary,
    comparison_html,
    environment_info,
    format_seconds,
    png_data_uri,
    report_html,
    write_report,
)

METRICS = {"mAP": 0.8472, "R1": 0.9031, "R10": 0.975, "R20": 0.99, "mINP": 0.4125, "mINP_std": 0.0125,
           "R5": float("nan"), "eval_seconds": 3.5}
METRIC_KEYS = ["mAP", "mINP", "R1", "R5", "R10", "R20"]  # market's declared keys that METRICS holds, in order
WANT_TEXT = {"mAP": "84.7", "R1": "90.3", "R5": "–", "R10": "97.5", "R20": "99.0", "mINP": "41.2 ± 1.2"}
ENV = {"python": "3.x", "torch": "2.x", "esreid": "0.1.0", "numpy": "2.x", "CPU": "test CPU, 2 logical cores",
       "memory": "1.0 GiB", "GPU": "none"}


class Page(html.parser.HTMLParser):
    """Collects <td data-metric> cells (attributes and text), <img> sources, <h2> headings and <a> hrefs."""

    def __init__(self, text):
        super().__init__()
        self.cells, self.images, self.headings, self.links, self.tags = [], [], [], [], []
        self._cell = self._h2 = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "td" and "data-metric" in a:
            self._cell = dict(a, text="")
            self.cells.append(self._cell)
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "h2":
            self._h2 = ""
        elif tag == "a":
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "h2":
            self.headings.append(self._h2)
            self._h2 = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._h2 is not None:
            self._h2 += data


def decode_data_uri(src):
    assert src.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
        img.load()
        return img.size


def records():
    out = []
    for it in range(1, 6):
        out.append({"type": "train", "epoch": 1, "iter": it, "lr": 0.1, "aib_ce": 5.0 - it, "esb_ce": 6.0 - it,
                    "loss": 11.0 - 2 * it, "erased_loss": 12.0 - 2 * it})
    out += [{"type": "epoch", "epoch": 1, "esb_l": 3.0, "erased_fraction": 0.5},
            {"type": "eval", "epoch": 1, "mAP": 0.8472, "R1": 0.9031}]
    return out


def grid_png():
    q = torch.full((3, 32, 16), 120, dtype=torch.uint8)
    m = torch.rand(4, 2)
    row = RankRow(q, [Match(q, 0.9, "match", map=m, query_map=m), Match(q, 0.5, "false"), Match(q, 0.4, "junk")],
                  title="ES-Net")
    return draw_rank_grid([row], tile_height=64).png()


def report_args():
    return dict(plots={"training": plot_training(records()), "CMC": plot_cmc({"ES-Net": [0.9, 0.95, 1.0]}),
                       "nothing to draw": None},
                grids={"query 3": grid_png()}, config_yaml="model:\n  name: esnet  # <b>not bold</b>\n",
                timings={"training": 117.0, "evaluation": 0.32}, environment=ENV, generated="today")


def make_report():
    return report_html("ES-Net & friends", METRICS, **report_args())


def check_metric_cells(cells, metrics, row=0, name=None, keys=METRIC_KEYS):
    """The row's cells: one per declared metric any run of the table holds (``keys``), in declaration order."""
    mine = [c for c in cells if c["id"].startswith(f"metric-{row}-")]
    assert [c["data-metric"] for c in mine] == keys
    for c in mine:
        key = c["data-metric"]
        assert c["id"] == f"metric-{row}-{key}"
        assert name is None or c["data-run"] == name
        v = metrics.get(key)
        assert c["data-value"] == ("" if v is None or v != v else repr(v))
    return {c["data-metric"]: c["text"] for c in mine}


def test_report_structure_and_metrics_cells():
    text = make_report()
    page = Page(text)
    assert page.headings == ["Metrics", "Plots", "Explanations", "Timings", "Config", "Environment"]
    assert check_metric_cells(page.cells, METRICS, name="ES-Net & friends") == WANT_TEXT
    mINP = next(c for c in page.cells if c["data-metric"] == "mINP")
    assert mINP["data-std"] == "0.0125"
    assert len(page.images) == 3  # training, CMC, one grid; the None plot is skipped
    sizes = [decode_data_uri(src) for src in page.images]
    assert all(w > 100 and h > 100 for w, h in sizes)
    # self-contained and safe: no script, no external resource, user text escaped
    assert "script" not in page.tags and "http://" not in text and "https://" not in text
    assert "&lt;b&gt;not bold&lt;/b&gt;" in text and "<b>" not in text
    assert "<title>ES-Net &amp; friends</title>" in text
    assert "1 min 57 s" in text and "0.32 s" in text and "test CPU, 2 logical cores" in text


def test_empty_sections_are_left_out():
    page = Page(report_html("bare", {"mAP": 0.5}, environment={}, generated="today"))
    assert page.headings == ["Metrics"] and page.images == []
    assert check_metric_cells(page.cells, {"mAP": 0.5}, keys=["mAP"]) == {"mAP": "50.0"}


def test_png_data_uri_refuses_anything_but_png(tmp_path):
    png = plot_cmc({"A": [1.0]})
    assert decode_data_uri(png_data_uri(png))[0] > 0
    for bad in (b"GIF89a....", "plot.png", None):
        with pytest.raises(ValueError, match="PNG"):
            png_data_uri(bad)


def test_comparison_page_has_one_row_per_run_and_a_cmc_plot():
    runs = [RunSummary("BoT", {"mAP": 0.5, "R1": 0.6, "cmc": [0.6, 0.7, 0.8]}, "bot/report.html"),
            RunSummary("ES-Net", {"mAP": 0.55, "R1": 0.65, "cmc": [0.65, 0.8, 0.9]}, "esnet/report.html"),
            RunSummary("chance", {"mAP": 0.01})]
    page = Page(comparison_html("demo", runs, environment=ENV, generated="today"))
    for i, run in enumerate(runs):
        texts = check_metric_cells(page.cells, run.metrics, row=i, name=run.name, keys=["mAP", "R1"])
    assert texts == {"mAP": "1.0", "R1": "–"}  # the chance row lacks R1
    assert page.links == ["bot/report.html", "esnet/report.html"]
    assert len(page.images) == 1 and decode_data_uri(page.images[0])[0] > 300  # the CMC of the two runs with one
    assert Page(comparison_html("demo", runs[2:], environment={})).images == []
    with pytest.raises(ValueError, match="distinct"):
        comparison_html("demo", [runs[0], runs[0]], environment={})


def test_write_report_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "run" / "report.html"
    write_report(str(path), "first", {"mAP": 0.1}, environment={})
    first = path.read_text(encoding="utf-8")
    assert "first" in first

    def interrupted(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(viz_images.os, "replace", interrupted)
    with pytest.raises(OSError, match="disk full"):
        write_report(str(path), "second", {"mAP": 0.2}, environment={})
    assert path.read_text(encoding="utf-8") == first  # the old report is intact
    assert os.listdir(path.parent) == ["report.html"]  # and no temporary file is left


def test_environment_info_and_durations():
    env = environment_info()
    assert {"python", "torch", "esreid", "numpy", "CPU", "memory", "GPU"} <= set(env)
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__
    assert [format_seconds(s) for s in (0.318, 57.2, 117.0, 7500.0)] == ["0.32 s", "57 s", "1 min 57 s", "2 h 05 min"]


READ_PAGE = """(() => ({
  cells: Array.from(document.querySelectorAll('td[data-metric]')).map(td => ({
    id: td.id, metric: td.dataset.metric, value: td.dataset.value, text: td.textContent.trim()})),
  images: Array.from(document.images).map(img => ({complete: img.complete, width: img.naturalWidth})),
  fetched: performance.getEntriesByType('resource').map(r => r.name),
}))()"""


def test_report_in_headless_chromium(chromium, tmp_path):
    path = write_report(str(tmp_path / "report.html"), "ES-Net", METRICS, **report_args())
    page = chromium.open_page("file://" + os.path.abspath(path))
    seen = page.evaluate(READ_PAGE)
    assert {c["metric"]: c["text"] for c in seen["cells"]} == WANT_TEXT
    assert all(c["id"] == f"metric-0-{c['metric']}" for c in seen["cells"])
    assert {c["metric"]: c["value"] for c in seen["cells"]}["mAP"] == repr(METRICS["mAP"])
    assert len(seen["images"]) == 3
    assert all(img["complete"] and img["width"] > 0 for img in seen["images"]), seen["images"]
    assert seen["fetched"] == []  # nothing loaded from outside the file
    shot = tmp_path / "report.png"
    shot.write_bytes(page.screenshot())
    print(f"screenshot of report.html: {shot}")
    with Image.open(shot) as img:
        assert img.width == 1280 and img.height > 900  # the full page, longer than the window
