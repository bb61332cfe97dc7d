"""`esreid ablate`: a paper table on synthetic data end to end (cells, mean ± sample std, files), resumability (finished
cells skipped, an interrupted cell resumed to the uninterrupted result, a folder of another config refused before
anything runs), shared cells, the paper's layout, sweep specs, command-line errors."""

import json
import os

import numpy as np
import pytest

import esreid.ablate as ablate_mod
from esreid.ablate import AblateError, Cell, Plan, TableResult, ablate, load_sweep, table_csv, table_markdown
from esreid.cli import main
from esreid.config import ConfigError
from esreid.engine import hooks
from esreid.paper import MARKET, TABLES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
TINY = ['data.args={"num_train_ids": 8, "num_test_ids": 4, "images_per_id": 5, "height": 32, "width": 16}',
        "data.height=32", "data.width=16", "data.ids_per_batch=4", "data.instances=2", "solver.epochs=1",
        "solver.warmup_epochs=0", "solver.milestones=[1]", "data.workers=0", "device=cpu"]
BASE = os.path.join(CONFIGS, "market1501", "base.yaml")


def run(tmp_path, out="out", **kw):
    lines = []
    kw = {"datasets": ["synthetic"], "seeds": [0], "config_root": CONFIGS, "overrides": TINY, **kw}
    res = ablate(out=str(tmp_path / out), log=lines.append, **kw)
    return res, lines


def results(folder):
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_table_on_synthetic_data_runs_every_row_and_summarises_over_seeds(tmp_path, monkeypatch):
    res, lines = run(tmp_path, tables=["III"], seeds=[0, 1])
    table = res["tables"]["III"]
    assert [r.config for r in TABLES["III"].rows] == ["base", "base_besm", "base_besm_ppool", "esnet_esb_only"]
    out = tmp_path / "out"
    for row in TABLES["III"].rows:
        cells = table.cells[(row.label, "synthetic")]
        assert [c.folder for c in cells] == [str(out / "synthetic" / row.config / f"seed{s}") for s in (0, 1)]
    md = (out / "table_III.md").read_text()
    base = [results(c.folder) for c in table.cells[("Base", "synthetic")]]
    for key in ("R1", "mAP"):
        vals = np.array([100 * m[key] for m in base])
        assert f"{vals.mean():.1f} ± {vals.std(ddof=1):.1f}" in md.split("| Base |")[1].split("\n")[0]
    assert md.count("\n| ") == 5 and "(paper" not in md and "(9" not in md  # 4 rows, no paper figure on synthetic
    csv_lines = (out / "table_III.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,config,seeds,synthetic R1 mean,synthetic R1 std,synthetic R1 n")
    assert len(csv_lines) == 5 and csv_lines[1].startswith("Base,base,0 1,")
    # a second run trains nothing: every cell is done
    monkeypatch.setattr(ablate_mod, "run_cell", lambda *a, **k: pytest.fail("a finished cell ran again"))
    monkeypatch.setattr(ablate_mod, "run_all", lambda plan, *a, **k: {c.folder: results(c.folder)
                                                                        for c in plan.all.values()})
    run(tmp_path, tables=["III"], seeds=[0, 1])
    assert (out / "table_III.md").read_text() == md


@pytest.mark.slow
def test_interrupted_cell_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    two = [*TINY, "solver.epochs=2", "solver.milestones=[1]"]
    (whole,) = run(tmp_path, "whole", configs=[BASE], overrides=two)[0]["metrics"].values()
    original = hooks.CheckpointHook.after_epoch

    def stop_after_first_epoch(self):
        original(self)
        if self.trainer.state.epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(hooks.CheckpointHook, "after_epoch", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt) as e:
        run(tmp_path, "cut", configs=[BASE], overrides=two)
    assert "resumes from its last.pth" in e.value.hint
    monkeypatch.setattr(hooks.CheckpointHook, "after_epoch", original)
    res, lines = run(tmp_path, "cut", configs=[BASE], overrides=two)
    assert any(line.endswith(": resuming") for line in lines)
    (resumed,) = res["metrics"].values()
    drop = lambda m: {k: v for k, v in m.items() if k != "eval_seconds"}  # noqa: E731
    assert drop(resumed) == drop(whole)


@pytest.mark.slow
def test_a_folder_of_another_config_is_refused_before_anything_runs(tmp_path, monkeypatch):
    run(tmp_path, configs=[BASE])
    monkeypatch.setattr(ablate_mod, "run_cell", lambda *a, **k: pytest.fail("nothing may run"))
    with pytest.raises(AblateError, match=r"holds a run of another config \(differs in solver.lr\)"):
        run(tmp_path, configs=[BASE], overrides=[*TINY, "solver.lr=0.01"])


def test_identical_configs_share_one_cell_across_commands(tmp_path):
    plan = Plan(str(tmp_path), [0, 1], CONFIGS, ablate_mod.scale_overrides(["synthetic"], str(tmp_path)), TINY)
    esnet = os.path.join(CONFIGS, "market1501", "esnet.yaml")
    row = plan.cells("synthetic", esnet, "esnet")
    point = plan.cells("synthetic", esnet, "esnet", ["model.erase_ratio=0.2"], "erase_ratio=0.2")  # = the row
    other = plan.cells("synthetic", esnet, "esnet", ["model.erase_ratio=0.3"], "erase_ratio=0.3")
    assert [c.folder for c in point] == [c.folder for c in row] and row[0].folder.endswith("synthetic/esnet/seed0")
    assert other[0].folder.endswith("synthetic/esnet@erase_ratio=0.3/seed0")
    plan.check_folders()  # saves the index
    later = Plan(str(tmp_path), [0], CONFIGS, plan.scale, TINY)  # another command on the same out folder
    assert later.cells("synthetic", esnet, "esnet", ["model.erase_ratio=0.2"], "x")[0].folder == row[0].folder


def test_demo_scale_keeps_the_kind_of_backbone(tmp_path):
    plan = Plan(str(tmp_path), [0], CONFIGS, ablate_mod.scale_overrides(["synthetic"], str(tmp_path)), [])
    backbone = lambda name: ablate_mod.cell_config(plan.cells(  # noqa: E731
        "synthetic", os.path.join(CONFIGS, "market1501", f"{name}.yaml"), name)[0]).model.backbone
    assert (backbone("esnet"), backbone("agw"), backbone("esnet_agw")) == ("resnet_tiny", "resnet_tiny_nl",
                                                                          "resnet_tiny_nl")


def test_markdown_and_csv_in_the_paper_layout():
    table = TABLES["III"]
    cells = {(r.label, "market1501"): [Cell("", (), f"{r.config}/{s}", s) for s in (0, 1)] for r in table.rows}
    metrics = {f"base/{s}": {"R1": r1, "mAP": m} for s, (r1, m) in enumerate([(0.93, 0.80), (0.95, 0.82)])}
    res = TableResult(table, (MARKET,), cells, paper=True)
    md = table_markdown(res, metrics, [0, 1])
    # mean 94.0, sample std sqrt(((93-94)^2 + (95-94)^2) / 1) = 1.414; the paper's Market figures in brackets
    assert "| Base | `base` | 94.0 ± 1.4 (93.9) | 81.0 ± 1.4 (83.2) |" in md
    assert "| Base+BESM | `base_besm` | – (94.3) | – (85.1) |" in md  # not run: only the paper's figure
    assert md.splitlines()[4] == "| method | config | Market-1501 R1 | Market-1501 mAP |"
    csv = table_csv(res, metrics, [0, 1]).splitlines()
    assert csv[1] == "Base,base,0 1,94.00,1.41,2,93.9,81.00,1.41,2,83.2"
    quoted = TableResult(TABLES["I"], (MARKET,), {}, paper=True)
    assert "| SVDNet | (quoted) | – (82.3) | – (62.1) |" in table_markdown(quoted, {}, [0])


def test_each_further_test_case_is_a_column_group():
    table = TABLES["III"]
    cells = {(r.label, "market1501"): [Cell("", (), f"{r.config}/{s}", s) for s in (0, 1)] for r in table.rows}

    def result(m, duke, occluded):
        return {"R1": 0.9, "mAP": m, "cases": {"market1501": {"R1": 0.9, "mAP": m}, "dukemtmcreid": {"R1": 0.5,
                "mAP": duke}, "market1501@random:0.2": {"R1": 0.7, "mAP": occluded}}}

    metrics = {"base/0": result(0.80, 0.30, 0.60), "base/1": result(0.82, 0.34, 0.64)}
    res = TableResult(table, (MARKET,), cells, paper=True)
    md = table_markdown(res, metrics, [0, 1])
    assert md.splitlines()[4] == ("| method | config | Market-1501 R1 | Market-1501 mAP | Market-1501 [dukemtmcreid] "
                                  "R1 | Market-1501 [dukemtmcreid] mAP | Market-1501 [market1501@random:0.2] R1 | "
                                  "Market-1501 [market1501@random:0.2] mAP |")
    # the primary case keeps the paper's figure; the others are the cells' own cases (mean ± sample std), no figure
    assert "| Base | `base` | 90.0 ± 0.0 (93.9) | 81.0 ± 1.4 (83.2) | 50.0 ± 0.0 | 32.0 ± 2.8 | 70.0 ± 0.0 | " \
           "62.0 ± 2.8 |" in md
    csv = table_csv(res, metrics, [0, 1]).splitlines()
    assert csv[0].split(",")[10:12] == ["market1501 mAP paper", "market1501[dukemtmcreid] R1 mean"]
    assert csv[1].split(",")[15:19] == ["32.00", "2.83", "2", ""]


@pytest.mark.slow
def test_ablate_end_to_end_has_a_column_group_and_a_progress_line_per_test_case(tmp_path):
    res, lines = run(tmp_path, configs=[BASE], overrides=[*TINY, "test.occlusion=[none,lower:0.5]"])
    (cell,) = [results(c.folder) for cells in res["tables"]["configs"].cells.values() for c in cells]
    assert list(cell["cases"]) == ["synthetic", "synthetic@lower:0.5"]
    assert any(line.strip().startswith("synthetic: mAP") for line in lines)  # the progress line of each case
    assert any(line.strip().startswith("synthetic@lower:0.5: mAP") for line in lines)
    md = (tmp_path / "out" / "table_configs.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "[synthetic@lower:0.5] mAP" in head
    row = [c.strip() for c in next(line for line in md.splitlines() if "`" in line).strip("|").split("|")]
    columns = [c.strip() for c in head.strip("|").split("|")]
    occluded = row[columns.index("Synthetic (demo scale) [synthetic@lower:0.5] mAP")]
    assert occluded == f"{100 * cell['cases']['synthetic@lower:0.5']['mAP']:.1f}"
    assert row[columns.index("Synthetic (demo scale) mAP")] == f"{100 * cell['mAP']:.1f}"  # the primary case


def test_sweep_spec_errors_name_the_key(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("title: t\nfolder: market1501\nmetrics: [mAP]\nx_label: R\nseries: [{label: a, config: esnet}]\n"
                    "points: [{x: 1, set: {}}]\n")
    with pytest.raises(ConfigError, match=r"s.yaml: key 'points\[0\]': expected \{x: <number>, set:"):
        load_sweep(str(spec), CONFIGS)
    with pytest.raises(ConfigError, match="known sweeps: fig4_erase_ratio, fig6_batch_composition"):
        load_sweep("fig5", CONFIGS)


@pytest.mark.parametrize("argv, message", [
    (["ablate"], "nothing to run: give --table, --sweep or --configs"),
    (["ablate", "--table", "XI"], "unknown table 'XI': the paper's tables are I, II, III"),
    (["ablate", "--table", "V", "--dataset", "dukemtmcreid"], "Table V has no dataset 'dukemtmcreid'"),
    (["ablate", "--table", "III", "--dataset", "synthetic", "market1501"], "--dataset synthetic runs alone"),
    (["ablate", "--table", "III", "--seeds", "0", "data.root=x"],
     "expected a seed, got the override 'data.root=x' (write overrides before"),
    (["ablate", "--table", "III", "--seeds", "-1"], "expected a seed"),
    (["ablate", "--table", "III", "--seeds", "0", "0"], "each seed once"),
])
def test_command_line_mistakes_are_one_line_errors(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "o"), "--config-root", CONFIGS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("esreid: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # before any work


def test_default_config_root_finds_the_shipped_configs_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the checkout's, where every table row's config lies
    assert os.path.samefile(ablate_mod.default_config_root(), CONFIGS)
    (tmp_path / "configs").mkdir()  # the user's own configs/ in the working folder come first
    assert ablate_mod.default_config_root() == "configs"
