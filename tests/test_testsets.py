"""Several training datasets, several test sets and occlusion conditions as one mechanism (esreid/engine/testsets.py):
the relabelling across datasets, the config schema and its errors, per-case metrics equal to the single-dataset
evaluator on each set alone (each with its own protocol), the primary case and checkpoint.best_on, the console lines,
a missing test set reported before training, and two synthetic domains end to end (train, eval rows per condition,
report)."""

import csv
import io
import json
import os

import pytest
import torch

from esreid.cli import main
from esreid.config import ConfigError, case_names, load_config
from esreid.data.base import ImageItem, ReIDDataset, build_dataset
from esreid.data.multi import CombinedTrainSet, combine_train
from esreid.engine.evaluator import evaluate_features, extract_test_features
from esreid.engine.hooks import BestCheckpointHook, format_cases
from esreid.engine.testsets import build_cases, evaluate_run, open_datasets
from esreid.evaluation.metric_keys import declared
from esreid.models import build_model

SMALL = "{num_train_ids: %d, num_test_ids: 6, images_per_id: 6, height: 64, width: 32, seed: %d, palette: %s}"


def two_domains(root, extra=()):
    """Overrides training on two synthetic domains (other seeds, ``default`` and ``dusk`` palettes) under ``root``."""
    train = (f"data.train=[{{name: synthetic, label: day, root: {root}/day, args: {SMALL % (10, 0, 'default')}}}, "
             f"{{name: synthetic, label: dusk, root: {root}/dusk, args: {SMALL % (8, 1, 'dusk')}}}]")
    return [f"data.root={root}", train, "data.height=32", "data.width=16", "data.ids_per_batch=4",
            "data.instances=2", "data.workers=0", "model.backbone=resnet_tiny", "solver.epochs=1",
            "solver.warmup_epochs=0", "solver.milestones=[1]", "solver.lr=1e-3", "device=cpu", "checkpoint.period=0",
            f"output_dir={root}/run", *extra]


def evaluate_alone(model, dataset, cfg):
    """The single-dataset evaluation: features of the dataset's query and gallery, its protocol."""
    features = extract_test_features(model, dataset, cfg, torch.device("cpu"))
    return evaluate_features(features, dataset, cfg, model.retrieval.metric)


def dataset(train):
    return ReIDDataset([ImageItem(f"/{i}.jpg", p, c) for i, (p, c) in enumerate(train)], [], [])


# ----------------------------------------------------------------------------------------------------------------
# Several training datasets: relabelling
# ----------------------------------------------------------------------------------------------------------------
def test_identities_and_cameras_of_two_datasets_never_collide():
    a = dataset([(0, 0), (0, 1), (1, 2)])  # relabelled pids 0..1, cameras 0..2
    b = dataset([(0, 0), (1, 0), (2, 4), (2, 1)])  # the same pid and camera numbers, other people and cameras
    items = combine_train([a, b])
    assert [(it.pid, it.camid) for it in items] == [(0, 0), (0, 1), (1, 2), (2, 3), (3, 3), (4, 7), (4, 4)]
    combined = CombinedTrainSet([("a", a), ("b", b)])
    assert combined.num_train_pids == 5 and not combined.query and not combined.gallery
    table = combined.summary()
    assert "a  " in table and "b  " in table and "total" in table
    assert [int(c) for c in table.splitlines()[-2].split("|")[1:]] == [5, 7, 6]  # cameras 0-2 and 3, 4, 7


def test_two_synthetic_domains_keep_their_identities_apart(tmp_path):
    cfg = load_config(None, two_domains(str(tmp_path)))
    run = open_datasets(cfg)
    day, dusk = run.train_parts
    assert day.num_train_pids == 10 and dusk.num_train_pids == 8
    items = run.train.train
    by_part = [items[: len(day.train)], items[len(day.train):]]
    pids = [{it.pid for it in part} for part in by_part]
    cams = [{it.camid for it in part} for part in by_part]
    assert pids[0] == set(range(10)) and pids[1] == set(range(10, 18)) and not cams[0] & cams[1]
    for part, original in zip(by_part, (day, dusk)):  # each image keeps its file and its own identity structure
        assert [it.path for it in part] == [it.path for it in original.train]
        assert len({(it.pid, o.pid) for it, o in zip(part, original.train)}) == original.num_train_pids
    # the two domains look different: dusk has a blue cast (the default palette has none)
    mean = [torch.stack([build_image(it.path) for it in d.train[:20]]).float().mean((0, 2, 3)) for d in (day, dusk)]
    assert mean[0][2] < 1.1 * mean[0][0] and mean[1][2] > 1.3 * mean[1][0]


def build_image(path):
    from esreid.data.transforms import decode_resize

    return decode_resize(path, 32, 16)


# ----------------------------------------------------------------------------------------------------------------
# The schema
# ----------------------------------------------------------------------------------------------------------------
def test_defaults_are_one_training_dataset_tested_on_its_own_split():
    cfg = load_config(None, ["data.name=market1501", "data.root=/d", "data.args={distractors_500k: true}"])
    assert [(e.name, e.root, e.args) for e in cfg.train_sets()] == [("market1501", "/d", {"distractors_500k": True})]
    assert [(e.name, e.protocol_args) for e in cfg.test_sets()] == [("market1501", {})]
    assert case_names(cfg) == ["market1501"]


def test_a_test_set_named_by_a_training_key_is_that_dataset():
    cfg = load_config(None, ["data.name=market1501", "data.root=/d",
                             "data.train=[{name: market1501, root: /m, args: {distractors_500k: true}}, msmt17]",
                             "test.datasets=[msmt17, market1501, dukemtmcreid]"])
    assert [(e.name, e.root, e.args) for e in cfg.test_sets()] == [
        ("msmt17", "/d", {}), ("market1501", "/m", {"distractors_500k": True}), ("dukemtmcreid", "/d", {})]


def test_test_sets_and_conditions_make_the_cases_in_order():
    cfg = load_config(None, ["data.name=market1501", "test.protocol_args={chunk_size: 64}",
                             "test.datasets=[dukemtmcreid, {name: cuhk03, label: cuhk03-labeled, args: {labeled: "
                             "true}, protocol_args: {}}]", "test.occlusion=[none, random:0.20]",
                             "checkpoint.best_on=cuhk03-labeled@random:0.2"])
    assert case_names(cfg) == ["dukemtmcreid", "dukemtmcreid@random:0.2", "cuhk03-labeled",
                               "cuhk03-labeled@random:0.2"]
    duke, cuhk = cfg.test_sets()
    assert duke.protocol_args == {"chunk_size": 64} and cuhk.protocol_args == {} and cuhk.args == {"labeled": True}


@pytest.mark.parametrize("overrides, message", [
    (["data.train=[market1501, market1501]"], "'data.train': 'market1501' is listed twice"),
    (["data.name=market1501", "data.train=[dukemtmcreid]"], "'data.name': data.train starts with 'dukemtmcreid'"),
    (["data.train=[market1501]", "data.args={seed: 1}"], "'data.args': with data.train each entry has its own"),
    (["data.train=[market1501, nope]"], r"'data.train\[1\]': unknown dataset 'nope'"),
    (["data.train=[{name: synthetic, args: {palette: noon}}]"], r"'data.train\[0\]': .*palette"),
    (["test.datasets=[{name: vehicleid, protocol_args: {trials: 0}}]"], r"'test.datasets\[0\]': .*trials"),
    (["test.datasets=[{root: /x}]"], r"'test.datasets\[0\].name': expected one of"),
    (["test.occlusion=[none, random:1.5]"], r"'test.occlusion\[1\]': .*0 < F < 1"),
    (["test.occlusion=[random:0.2, random:0.20]"], "'test.occlusion': a condition is listed twice"),
    (["checkpoint.best_on=market1501"], "'checkpoint.best_on': expected one of the test cases synthetic"),
])
def test_schema_mistakes_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=f"command line: key {message}"):
        load_config(None, overrides)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation over cases
# ----------------------------------------------------------------------------------------------------------------
def test_each_case_equals_the_single_dataset_evaluator_with_its_own_protocol(tmp_path, layouts):
    layouts.make_vehicleid(str(tmp_path / "vid"), "VehicleID_V1.0")
    dusk = SMALL % (8, 1, "dusk")
    common = ["data.height=32", "data.width=16", "data.workers=0", "model.backbone=resnet_tiny", "test.ranks=[1, 2]"]
    cfg = load_config(None, [*common, f"test.datasets=[{{name: synthetic, label: dusk, root: {tmp_path}/dusk, args: "
                                      f"{dusk}}}, {{name: vehicleid, root: {tmp_path}/vid, protocol_args: "
                                      "{trials: 3}}]"])
    run = open_datasets(cfg, train=False)
    torch.manual_seed(0)
    model = build_model(cfg.model, 8, cfg.test).eval()
    metrics, results = evaluate_run(model, build_cases(cfg, run.test_sets), cfg, torch.device("cpu"))
    assert list(metrics["cases"]) == ["dusk", "vehicleid"]
    # each test set alone, as a one-dataset config evaluates it (data.name, data.args, test.protocol_args)
    alone = {
        "dusk": evaluate_alone(model, build_dataset("synthetic", f"{tmp_path}/dusk", False, **cfg.test_sets()[0].args),
                               load_config(None, [*common, "data.name=synthetic", f"data.args={dusk}"])),
        "vehicleid": evaluate_alone(model, build_dataset("vehicleid", f"{tmp_path}/vid", False),
                                    load_config(None, [*common, "data.name=vehicleid",
                                                       "test.protocol_args={trials: 3}"])),
    }
    for name, single in alone.items():
        got = metrics["cases"][name]
        assert {k: v for k, v in got.items() if k != "eval_seconds"} == \
            {k: v for k, v in single.items() if k != "eval_seconds"}, name
    assert metrics["cases"]["vehicleid"]["trials"] == 3 and "mAP_std" in metrics["cases"]["vehicleid"]  # its own
    assert "num_valid_q" in metrics["cases"]["dusk"]  # ... and Market's
    flat = {k: v for k, v in metrics.items() if k not in ("cases", "eval_seconds")}
    assert flat == {k: v for k, v in metrics["cases"]["dusk"].items() if k != "eval_seconds"}  # primary = first
    assert [r.case.name for r in results] == ["dusk", "vehicleid"]


def test_reliance_is_the_map_lost_from_the_unoccluded_queries():
    from types import SimpleNamespace

    from esreid.config.occlusion import parse_condition
    from esreid.engine.testsets import CaseResult, TestCase, TestSet, reliance

    def result(key, condition, mAP):
        test_set = TestSet(SimpleNamespace(key=key), None)
        return CaseResult(TestCase(test_set, parse_condition(condition)), None, {"mAP": mAP})

    results = [result("a", "none", 0.50), result("a", "random:0.2", 0.30), result("a", "lower:0.3", 0.55),
               result("b", "random:0.2", 0.1)]  # b has no unoccluded case: nothing to compare with
    assert reliance(results) == {"a": {"random:0.2": pytest.approx(20.0), "lower:0.3": pytest.approx(-5.0)}}


def test_console_lines_one_per_case():
    record = {"mAP": 0.5, "R1": 0.6, "cases": {"a": {"mAP": 0.5, "R1": 0.6}, "a@random:0.2": {"mAP": 0.25}}}
    assert format_cases(record, "eval") == ["eval a: mAP 50.0  R1 60.0", "eval a@random:0.2: mAP 25.0"]
    assert format_cases({"mAP": 0.5, "cases": {"a": {"mAP": 0.5}}}, "eval") == ["eval: mAP 50.0"]


class Saver:
    start_epoch = 0

    def __init__(self):
        self.saved = []

    def save_checkpoint(self, path, full=False, epoch=None):
        self.saved.append(epoch)


@pytest.mark.parametrize("case, expected", [("", [1, 2]), ("duke", [1, 3])])
def test_best_checkpoint_follows_the_case_that_decides(tmp_path, case, expected):
    mAP = next(m for m in declared("market").keys if m.key == "mAP")
    hook = BestCheckpointHook(str(tmp_path), mAP, case=case)
    hook.trainer = Saver()
    # the primary test set (top level) improves at epoch 2, the second test set at epoch 3
    for epoch, primary, duke in [(1, 0.3, 0.1), (2, 0.4, 0.05), (3, 0.35, 0.2)]:
        hook.on_record({"type": "eval", "epoch": epoch, "mAP": primary,
                        "cases": {"market1501": {"mAP": primary}, "duke": {"mAP": duke}}})
    assert hook.trainer.saved == expected


def test_a_missing_test_set_stops_training_before_it_starts(tmp_path, capsys, tiny_config):
    from esreid.config import dump_yaml

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(dump_yaml(tiny_config(epochs=1)))
    args = ["train", "--config", str(cfg_path),
            f"test.datasets=[synthetic, {{name: dukemtmcreid, root: {tmp_path}/nothing}}]"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("esreid: error: test set 'dukemtmcreid': DukeMTMC-reID: dataset root ")
    assert f"{tmp_path}/nothing does not exist" in err[0]
    os.makedirs(tmp_path / "nothing")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"no 'bounding_box_train' under {tmp_path}/nothing (looked in {tmp_path}/nothing/dukemtmc-reid/" in err
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "model baseline" not in log and not (tmp_path / "run" / "last.pth").exists()  # nothing was built


# ----------------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_domains_train_together_and_eval_writes_a_row_per_condition(tmp_path, capsys):
    from esreid.engine.checkpoint import load_checkpoint
    from esreid.engine.trainer import Trainer

    cfg = load_config(None, two_domains(str(tmp_path), ["report=false"]))
    lines = []
    metrics = Trainer(cfg, progress=False, log=lines.append).train()
    log = "\n".join(lines)
    assert "2 training datasets combined" in log and "total                 |    18 |" in log
    assert "epoch 1 day: mAP" in log and "epoch 1 dusk: mAP" in log  # each test set (default: the training ones)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(results["cases"]) == ["day", "dusk"] and results["mAP"] == results["cases"]["day"]["mAP"]
    assert results["cases"]["dusk"]["mAP"] == metrics["cases"]["dusk"]["mAP"]
    assert load_checkpoint(str(tmp_path / "run" / "last.pth"))["num_classes"] == 18  # 10 + 8 identities

    (tmp_path / "run.yaml").write_text((tmp_path / "run" / "config.yaml").read_text())
    capsys.readouterr()
    out = tmp_path / "ev"
    assert main(["eval", "--config", str(tmp_path / "run.yaml"), "--weights", str(tmp_path / "run" / "last.pth"),
                 "--out", str(out), "test.occlusion=[none,random:0.3]", "test.datasets=[dusk]"]) == 0
    printed = capsys.readouterr().out
    assert "eval dusk: mAP" in printed and "eval dusk@random:0.3: mAP" in printed
    rows = list(csv.DictReader(io.StringIO((out / "cases.csv").read_text())))
    assert [(r["case"], r["test_set"], r["condition"], r["protocol"]) for r in rows] == [
        ("dusk", "dusk", "none", "market"), ("dusk@random:0.3", "dusk", "random:0.3", "market")]
    evaluated = json.loads((out / "results.json").read_text())
    assert float(rows[0]["mAP"]) == pytest.approx(evaluated["cases"]["dusk"]["mAP"], abs=1e-6)
    # unoccluded, the eval command ranks exactly as the evaluation at the end of training did
    assert evaluated["cases"]["dusk"]["mAP"] == pytest.approx(results["cases"]["dusk"]["mAP"], abs=1e-6)
    assert evaluated["cases"]["dusk@random:0.3"]["mAP"] != evaluated["cases"]["dusk"]["mAP"]
    html = (out / "report.html").read_text()
    assert "<h2>Test case dusk</h2>" in html and "<h2>Test case dusk@random:0.3</h2>" in html
    assert "occluded queries (random:0.3) and their top 5" in html and "mAP lost from unoccluded queries" in html


def as_duke(source, target):
    """The images of a synthetic (Market-named) dataset under Duke's names ``<pid>_c<cam>_f<frame:07d>.jpg`` in
    ``target`` (Duke has no junk ``-1`` or distractor ``0000`` names: those are left out)."""
    import re
    import shutil

    for split in ("bounding_box_train", "query", "bounding_box_test"):
        os.makedirs(os.path.join(target, split))
        for name in os.listdir(os.path.join(source, split)):
            m = re.fullmatch(r"(\d{4})_c(\d)s\d_(\d{6})_01\.jpg", name)
            if m and int(m.group(1)) > 0:
                shutil.copy(os.path.join(source, split, name),
                            os.path.join(target, split, f"{m.group(1)}_c{m.group(2)}_f{int(m.group(3)):07d}.jpg"))


@pytest.mark.slow
def test_eval_of_a_trained_run_on_market1501_and_dukemtmcreid(tmp_path, capsys, tiny_config):
    """``esreid eval --config <run>/config.yaml test.datasets=[market1501,dukemtmcreid]``: a run trained on one
    synthetic domain, evaluated on two others laid out as Market-1501 (default palette) and DukeMTMC-reID (dusk
    palette, Duke's file names) under data.root: a case per test set, each as the single-dataset evaluator scores
    that dataset alone."""
    import shutil

    from esreid.data.datasets.synthetic import generate_synthetic_market
    from esreid.engine.session import open_trained
    from esreid.engine.trainer import Trainer

    Trainer(tiny_config(epochs=1), progress=False, log=lambda line: None).train()
    run = tmp_path / "run"
    reid = tmp_path / "reid"
    for seed, palette in ((3, "default"), (4, "dusk")):
        generate_synthetic_market(str(tmp_path / palette), num_train_ids=4, num_test_ids=6, images_per_id=6,
                                  height=64, width=32, seed=seed, palette=palette)
    shutil.copytree(tmp_path / "default", reid / "market1501")
    as_duke(str(tmp_path / "dusk"), str(reid / "DukeMTMC-reID"))
    capsys.readouterr()
    out = tmp_path / "ev"
    assert main(["eval", "--config", str(run / "config.yaml"), "--weights", str(run / "last.pth"), "--out", str(out),
                 f"data.root={reid}", "test.datasets=[market1501,dukemtmcreid]"]) == 0
    printed = capsys.readouterr().out
    assert "test set market1501:" in printed and "test set dukemtmcreid:" in printed  # each one's dataset table
    assert "eval market1501: mAP" in printed and "eval dukemtmcreid: mAP" in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results["cases"]) == ["market1501", "dukemtmcreid"]
    rows = list(csv.DictReader(io.StringIO((out / "cases.csv").read_text())))
    assert [(r["case"], r["dataset"], r["protocol"]) for r in rows] == [("market1501", "market1501", "market"),
                                                                        ("dukemtmcreid", "dukemtmcreid", "market")]
    cfg = load_config(str(run / "config.yaml"), [f"data.root={reid}"])
    model = open_trained(cfg, str(run / "last.pth")).model
    for name in ("market1501", "dukemtmcreid"):
        single = evaluate_alone(model, build_dataset(name, str(reid), False), cfg)
        assert results["cases"][name]["mAP"] == pytest.approx(single["mAP"], abs=1e-6), name
        assert results["cases"][name]["R1"] == pytest.approx(single["R1"], abs=1e-6), name
    assert results["cases"]["market1501"]["mAP"] != results["cases"]["dukemtmcreid"]["mAP"]


# ----------------------------------------------------------------------------------------------------------------
# Several datasets with the SaliencyTrap's cue masks; the palette on the trap's renderings
# ----------------------------------------------------------------------------------------------------------------
TRAP = "{num_train_ids: 6, num_test_ids: 4, images_per_id: 4, height: 32, width: 16, seed: %d, trap: {cue: patch}%s}"


def test_every_training_part_must_declare_cue_masks_and_the_combined_set_reads_each_parts(tmp_path):
    parts = (f"data.train=[{{name: synthetic, label: day, root: {tmp_path}/day, args: {TRAP % (0, '')}}}, "
             f"{{name: synthetic, label: dusk, root: {tmp_path}/dusk, args: {TRAP % (1, ', palette: dusk')}}}]")
    common = ["data.height=32", "data.width=16", "model.name=esnet", "model.backbone=resnet_tiny",
              "model.saliency=oracle"]
    cfg = load_config(None, [*common, parts])
    run = open_datasets(cfg)
    day, dusk = run.train_parts
    combined = run.train.train
    assert run.train.cue_masks(combined) == day.cue_masks(day.train) + dusk.cue_masks(dusk.train)
    picked = [combined[-1], combined[0]]  # any subset, in its own order (the cue-coverage batches)
    assert run.train.cue_masks(picked) == [dusk.cue_masks(dusk.train)[-1], day.cue_masks(day.train)[0]]
    without = parts.replace(", trap: {cue: patch}, palette: dusk", ", palette: dusk")
    with pytest.raises(ConfigError, match=r"key 'model.saliency': 'oracle' erases .* but dusk with its args declares"):
        load_config(None, [*common, without])
    with pytest.raises(ConfigError, match=r"key 'diagnostics.cue_coverage': .* dusk with its args declares none"):
        load_config(None, [*common[:-1], without, "diagnostics.cue_coverage=true"])


def test_the_palette_recolours_the_trap_and_its_cue_free_twin_not_the_masks(tmp_path):
    import numpy as np
    from PIL import Image

    from esreid.data.synth.render import apply_domain

    opts = {"num_train_ids": 4, "num_test_ids": 4, "images_per_id": 4, "height": 64, "width": 32,
            "trap": {"cue": "patch"}}
    plain = build_dataset("synthetic", str(tmp_path / "a"), False, **opts)
    dusk = build_dataset("synthetic", str(tmp_path / "b"), False, palette="dusk", **opts)
    dusk_free = build_dataset("synthetic", str(tmp_path / "b"), False, palette="dusk", test_rendering="cuefree",
                              **opts)
    plain_free = build_dataset("synthetic", str(tmp_path / "a"), False, test_rendering="cuefree", **opts)
    names = [os.path.basename(it.path) for it in plain.query]
    assert names == [os.path.basename(it.path) for it in dusk.query]  # the same draws, only recoloured

    def pixels(path):
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)

    for a, b in ((plain.query, dusk.query), (plain_free.query, dusk_free.query)):
        for x, y in zip(a, b):
            recoloured = apply_domain(pixels(x.path).astype(np.uint8), "dusk").astype(np.float64)
            off = np.abs(pixels(y.path) - recoloured).mean()  # the palette, within the noise of two JPEG passes
            assert off < 6 and off < 0.2 * np.abs(pixels(y.path) - pixels(x.path)).mean()  # ... a large change
    for x, y in zip(plain.cue_masks(plain.query), dusk.cue_masks(dusk.query)):
        assert np.array_equal(np.asarray(Image.open(x)), np.asarray(Image.open(y)))  # where the cue is
