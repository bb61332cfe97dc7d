"""What a training run leaves for people: report.html (refreshed at each evaluation, opened in headless Chromium:
metrics equal to results.json, every image decoded), log.txt (exactly the console lines: banner, dataset table once,
per-epoch lines with ETA and peak memory), no progress-bar output when stderr is not a terminal, and the report of
``esreid eval``."""

import contextlib
import io
import json
import os
import sys

import pytest

from esreid.cli import main
from esreid.console import format_seconds, interactive, progress
from esreid.engine.hooks import HookBase
from esreid.engine.trainer import Trainer

EPOCHS = 2
READ_PAGE = """(() => ({
  cells: Array.from(document.querySelectorAll('td[data-metric]')).map(td => ({
    metric: td.dataset.metric, value: td.dataset.value, text: td.textContent.trim()})),
  images: Array.from(document.images).map(img => ({alt: img.alt, complete: img.complete, width: img.naturalWidth})),
  headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
}))()"""


class ReportReader(HookBase):
    """Runs after the default hooks: reads report.html each time an evaluation has been reported."""

    def __init__(self):
        self.seen = []

    def on_record(self, record):
        if record["type"] == "eval":
            with open(os.path.join(self.trainer.out, "report.html"), encoding="utf-8") as f:
                self.seen.append((record["epoch"], f.read()))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny ES-Net run with its report: (output folder, console lines, stderr text, report snapshots)."""
    root = tmp_path_factory.mktemp("report_run")
    from esreid.config import load_config

    cfg = load_config(None, [
        "data.name=synthetic", f"data.root={root / 'data'}",
        'data.args={"num_train_ids": 8, "num_test_ids": 6, "images_per_id": 5, "height": 64, "width": 32}',
        "data.height=64", "data.width=32", "data.ids_per_batch=4", "data.instances=2", "data.workers=0",
        "model.name=esnet", "model.backbone=resnet_tiny", "model.pretrained=''", f"solver.epochs={EPOCHS}",
        "solver.warmup_epochs=1", "solver.milestones=[1]", "test.eval_period=1", "device=cpu", "log_period=2",
        "checkpoint.period=0", f"output_dir={root / 'run'}"])
    lines, err, reader = [], io.StringIO(), ReportReader()
    with contextlib.redirect_stderr(err):
        Trainer(cfg, progress=True, log=lines.append, hooks=[reader]).train()
    return root / "run", lines, err.getvalue(), reader.seen


def test_log_txt_holds_exactly_the_console_lines(run):
    out, lines, err, _ = run
    assert (out / "log.txt").read_text(encoding="utf-8") == "".join(line + "\n" for line in lines)
    text = "\n".join(lines)
    assert lines[0].startswith("==== ") and f"output_dir {out}" in lines[0]
    assert text.count("=> synthetic loaded") == 1 and text.count("subset   | # ids") == 1  # the table, once
    assert "esnet (resnet_tiny, 0." in text and "M parameters) on cpu, 1 intra-op thread (threads: auto)" in text
    epochs = [line for line in lines if line.startswith("epoch ") and "img/s" in line]
    assert [e.split()[1] for e in epochs] == [f"{i}/{EPOCHS}" for i in range(1, EPOCHS + 1)]
    assert all(" data " in e and " ETA " in e and " MiB" in e for e in epochs)
    assert epochs[-1].split("ETA ")[1].startswith(format_seconds(0.0))
    assert lines[-1] == f"report: {out / 'report.html'}"
    results = json.loads((out / "results.json").read_text())
    evals = [line for line in lines if line.startswith(f"epoch {EPOCHS}: mAP ")]  # every declared metric, in order
    assert evals == [f"epoch {EPOCHS}: " + "  ".join(f"{k} {100 * results[k]:.1f}" for k in
                                                     ("mAP", "mINP", "R1", "R5", "R10", "R20", "mRR"))]
    assert err == ""  # progress=True, but stderr is no terminal: no bar, no carriage returns


def test_epoch_records_have_data_time_eta_and_peak_memory(run):
    out = run[0]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epochs"] for r in epochs] == [EPOCHS] * EPOCHS
    for r in epochs:
        assert 0 <= r["data_seconds"] <= r["seconds"] and r["peak_memory_mb"] > 50  # torch alone takes more
    first, last = epochs[0], epochs[-1]
    assert last["eta_seconds"] == 0.0
    assert first["eta_seconds"] >= first["seconds"] * (EPOCHS - 1)  # at least the remaining epochs at this pace


def test_report_is_refreshed_at_each_evaluation(run):
    seen = run[3]
    assert [epoch for epoch, _ in seen] == list(range(1, EPOCHS + 1))
    for epoch, html in seen:
        assert f"epoch {epoch}: query" in html and f"epoch {epoch + 1}: query" not in html


def test_report_in_headless_chromium_matches_results_json(run, chromium, tmp_path):
    out = run[0]
    results = json.loads((out / "results.json").read_text())
    page = chromium.open_page("file://" + str(out / "report.html"))
    seen = page.evaluate(READ_PAGE)
    assert seen["headings"] == ["Metrics", "Plots", "Explanations", "Timings", "Config", "Environment"]
    cells = {c["metric"]: c for c in seen["cells"]}
    assert set(cells) == {"mAP", "R1", "R5", "R10", "R20", "mINP", "mRR"}  # what the market protocol declares
    for key, cell in cells.items():
        assert cell["value"] == repr(results[key]) and cell["text"] == f"{100 * results[key]:.1f}"
    alts = [img["alt"] for img in seen["images"]]
    assert alts[:2] == ["CMC", "training curves"] and len(alts) == 5  # and three explained queries
    assert all(img["complete"] and img["width"] > 0 for img in seen["images"]), seen["images"]
    shot = tmp_path / "report.png"
    shot.write_bytes(page.screenshot())
    print(f"screenshot of a trained run's report.html: {shot}")


def test_eval_writes_a_report_with_the_same_metrics(run, tmp_path, capsys):
    out = run[0]
    assert main(["eval", "--config", str(out / "config.yaml"), "--weights", str(out / "last.pth")]) == 0
    printed = capsys.readouterr().out
    folder = out / "eval_last"
    assert printed.count("=> synthetic loaded") == 1 and f"report: {folder / 'report.html'}" in printed
    got, want = (json.loads((f / "results.json").read_text()) for f in (folder, out))
    assert {k: got[k] for k in ("mAP", "R1", "mINP")} == {k: want[k] for k in ("mAP", "R1", "mINP")}
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "last.pth" in html and 'alt="training curves"' in html and 'alt="CMC"' in html
    assert (out / "report.html").stat().st_mtime < (folder / "report.html").stat().st_mtime  # the run's is kept


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_only_on_a_terminal(monkeypatch):
    for stream, drawn in ((io.StringIO(), False), (FakeTerminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert interactive() is drawn
        assert list(progress(range(3), "extract", unit="batch")) == [0, 1, 2]
        text = stream.getvalue()
        assert (("extract:" in text and "/3 [" in text) if drawn else text == ""), text  # the bar, with its total
    assert list(progress(range(2), "off", enabled=False)) == [0, 1] and "off" not in sys.stderr.getvalue()
