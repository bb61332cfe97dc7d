"""Every config mistake is found at load time: one ``esreid: error:`` line naming the key and the file, exit 2, before
any dataset is scanned (data.root points nowhere, so a scan would fail with another message).

Three sets of cases: the mistakes users made (named in the issue), a wrong type for every key of the schema of every
registered model, and an out-of-range value for every declared constraint (with the boundary value accepted).
"""

import dataclasses
import typing

import pytest

from esreid.cli import main
from esreid.config import Config, ConfigError, load_config
from esreid.models import MODELS

NOWHERE = "/dev/null/esreid-data"  # cannot be created either (the synthetic generator would)


def write_config(tmp_path, body):
    """``body`` under a data.root where nothing can be (unless ``body`` sets data.root itself)."""
    path = tmp_path / "c.yaml"
    path.write_text(("" if body.startswith("data:\n  root:") else f"data:\n  root: {NOWHERE}\n") + body)
    return str(path)


def cli_error(tmp_path, capsys, body, overrides=()):
    """Run ``esreid train`` on a config holding ``body``; returns the one stderr line (asserting exit 2)."""
    path = write_config(tmp_path, body)
    code = main(["train", "--config", path, *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("esreid: error: "), err
    assert NOWHERE not in err, f"the dataset was scanned before the config was checked: {err}"
    return err.strip(), path


# --------------------------------------------------------------------------------------------------------------
# The mistakes named in the issue
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, key, message", [
    ("model:\n  name: esnet\n  erase_ratio: 1.5\n", "model.erase_ratio", "expected a value <= 1, got 1.5"),
    ("model:\n  name: esnet\n  saliency: foo\n", "model.saliency", "expected one of cgram, gradcam; got 'foo'"),
    ("model:\n  backbone: resnet152\n", "model.backbone", "expected one of resnet101, resnet18, resnet34, resnet50, "
                                                          "resnet50_nl, resnet_tiny, resnet_tiny_bottleneck, "
                                                          "resnet_tiny_nl; got 'resnet152'"),
    ("data:\n  name: market\n", "data.name", "expected one of cuhk03, custom, dukemtmcreid, market1501, msmt17, "
                                            "synthetic, vehicleid, veri776; got 'market'"),
    ("solver:\n  lr: -1\n", "solver.lr", "expected a value > 0, got -1.0"),
    ("test:\n  ranks: [0]\n", "test.ranks", "item 0 (0): expected a value >= 1, got 0"),
    ("data:\n  test_batch_size: 0\n", "data.test_batch_size", "expected a value >= 1, got 0"),
    ("diagnostics:\n  erased_loss: true\n  layer: backbone.layer4\n", None, None),  # valid: checked when the model is
])
def test_the_mistakes_users_made(tmp_path, capsys, body, key, message):
    if key is None:
        load_config(write_config(tmp_path, body))
        return
    err, path = cli_error(tmp_path, capsys, body)
    assert f"{path}: key '{key}': {message}" in err


@pytest.mark.parametrize("body, key, message", [
    ("solver:\n  milestones: [40, 30]\n", "solver.milestones", "expected strictly increasing epochs, got [40, 30]"),
    ("solver:\n  epochs: 30\n", "solver.milestones", "milestone 70 lies after the last of the 30 epochs"),
    ("solver:\n  gamma: 0\n", "solver.gamma", "expected a value > 0, got 0.0"),
    ("solver:\n  gamma: 1.5\n", "solver.gamma", "expected a value <= 1, got 1.5"),
    ("solver:\n  weight_decay: -0.1\n", "solver.weight_decay", "expected a value >= 0, got -0.1"),
    ("solver:\n  lr: .nan\n", "solver.lr", "expected a finite number, got nan"),
    ("solver:\n  lr: .inf\n", "solver.lr", "expected a finite number, got inf"),
    ("model:\n  loss:\n    triplet_margin: -0.3\n", "model.loss.triplet_margin", "expected a value >= 0, got -0.3"),
    ("model:\n  loss:\n    ce_weight: 0\n    triplet_weight: 0\n", "model.loss.ce_weight", "both loss weights"),
    ("data:\n  ids_per_batch: 1\n", "data.ids_per_batch", "expected a value >= 2, got 1"),
    ("data:\n  instances: 1\n", "data.instances", "the triplet loss needs at least 2 images per identity"),
    ("data:\n  cutout_prob: 0.5\n  cutout_size: 300\n", "data.cutout_size", "does not fit in 256x128 images"),
    ("data:\n  height: 256\nmodel:\n  name: pmm\n", "model.block_size", "the 16x8 layer4 map of 256x128 images is "
                                                                       "not a multiple of the 3x2 block"),
    ("data:\n  height: 384\nmodel:\n  name: pmm\n  top_k: 40\n", "model.top_k", "40 blocks requested but the map has "
                                                                                "only 32 blocks of 3x2"),
    ("model:\n  name: bdb\n  backbone: resnet_tiny\n  drop_height_ratio: 0.01\n", "model.drop_height_ratio",
     "the dropped block would be 0x8 cells"),
    ("data:\n  name: vehicleid\n  args: {test_size: 900}\n", "data.args", "expected one of (800, 1600, 2400), got 900"),
    ("data:\n  name: market1501\n  args: {labeled: true}\n", "data.args", "bad option"),
    ("data:\n  name: synthetic\n  args: {num_train_ids: 0}\n", "data.args", "num_train_ids and num_test_ids must be"),
    ("test:\n  protocol_args: {num_repeats: 3}\n", "test.protocol_args", "protocol 'market' has no option "
                                                                         "'num_repeats'"),
    ("data:\n  name: cuhk03\n  args: {sgs: true}\ntest:\n  protocol_args: {num_repeats: 0}\n", "test.protocol_args",
     "option 'num_repeats' of protocol 'cuhk03_sgs': expected a value >= 1, got 0"),
    ("device: gpu\n", "device", "expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("seed: -1\n", "seed", "expected a value >= 0, got -1"),
    ("model:\n  name: aelm\n  insertion_points: [layer4, layer3]\n", "model.insertion_points", "trunk order"),
])
def test_structural_and_cross_field_mistakes(tmp_path, capsys, body, key, message):
    err, path = cli_error(tmp_path, capsys, body)
    assert f"{path}: key '{key}': " in err and message in err, err


@pytest.mark.parametrize("overrides, message", [
    (["model=~"], "override 'model=~': 'model' is a section; set its keys"),
    (["solver=3"], "override 'solver=3': 'solver' is a section"),
    (["model.loss=1"], "override 'model.loss=1': 'model.loss' is a section"),
])
def test_a_section_cannot_be_replaced_by_a_value(tmp_path, capsys, overrides, message):
    err, _ = cli_error(tmp_path, capsys, "", overrides)
    assert f"command line: {message}" in err


def test_mapping_overrides_merge_into_the_section(tmp_path):
    path = write_config(tmp_path, "solver:\n  lr: 0.01\n  epochs: 80\n")
    cfg = load_config(path, ["solver={lr: 0.1}", "model.loss={triplet_margin: 0.5}"])
    assert (cfg.solver.lr, cfg.solver.epochs) == (0.1, 80)  # merged, not reset to the defaults
    assert (cfg.model.loss.triplet_margin, cfg.model.loss.ce_weight) == (0.5, 1.0)


# --------------------------------------------------------------------------------------------------------------
# Every key of every section, for every registered model
# --------------------------------------------------------------------------------------------------------------
def schema_fields(cls, prefix=""):
    """(dotted key, type, dataclass field) of every leaf field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from schema_fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp, f


def all_fields():
    seen = {}
    for key, tp, f in schema_fields(Config):
        if not key.startswith("model."):
            seen[key] = ("baseline", tp, f)
    for name in MODELS.names():
        for key, tp, f in schema_fields(MODELS.meta(name)["config"], "model."):
            seen.setdefault(key if key != "model.name" else "model.name", (name, tp, f))
    return sorted(seen.items())


FIELDS = all_fields()


def wrong_value(tp):
    """A value of the wrong type for annotation ``tp`` (YAML text) and the word the error uses."""
    base = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Union else tp
    origin = typing.get_origin(base)
    if base is bool:
        return "3", "expected true/false"
    if base is int:
        return "1.5", "expected an integer"
    if base is float:
        return "fast", "expected a number"
    if base is str:
        return "[a]", "expected a string"
    if origin in (list, typing.List):
        return "7", "expected a list"
    if origin in (dict, typing.Dict):
        return "7", "expected a mapping"
    raise AssertionError(f"no wrong value for {tp}")


def yaml_for(key, value, model):
    """A YAML document setting dotted ``key`` to ``value`` (YAML text) for ``model``."""
    parts = key.split(".")
    lines, indent = [], ""
    if parts[0] == "model" and key != "model.name":
        lines.append(f"model:\n  name: {model}")
        indent = "  "
        for part in parts[1:-1]:
            lines.append(f"{indent}{part}:")
            indent += "  "
        lines.append(f"{indent}{parts[-1]}: {value}")
        return "\n".join(lines) + "\n"
    for part in parts[:-1]:
        lines.append(f"{indent}{part}:")
        indent += "  "
    lines.append(f"{indent}{parts[-1]}: {value}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("key, spec", FIELDS, ids=[k for k, _ in FIELDS])
def test_a_wrong_type_for_every_key_is_named(tmp_path, capsys, key, spec):
    model, tp, _ = spec
    value, words = wrong_value(tp)
    err, path = cli_error(tmp_path, capsys, yaml_for(key, value, model))
    assert f"{path}: key '{key}'" in err and words in err, err


NOT_NULL = [(k, spec) for k, spec in FIELDS
            if spec[1] is not typing.Any and type(None) not in typing.get_args(spec[1])]


@pytest.mark.parametrize("key, spec", NOT_NULL, ids=[k for k, _ in NOT_NULL])
def test_null_is_refused_where_the_key_takes_no_null(tmp_path, capsys, key, spec):
    # threads: null (int or 'auto') was accepted and crashed the run at int(None)
    model, _, _ = spec
    err, path = cli_error(tmp_path, capsys, yaml_for(key, "null", model))
    assert f"{path}: key '{key}'" in err and ("got null" in err or "got None" in err or "is empty" in err), err


def list_of(n):
    """YAML text of a list of ``n`` copies of a value (a list field with a declared length gets that many items)."""
    return lambda v: "[" + ", ".join([str(v)] * n) + "]"


def bound_cases():
    """(key, model, bad value, good boundary value, message) for every numeric bound and choice list declared."""
    cases = []
    for key, (model, tp, f) in FIELDS:
        check = f.metadata.get("check")
        if check is None:
            continue
        base = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Union else tp
        is_list = typing.get_origin(base) in (list, typing.List)
        item = typing.get_args(base)[0] if is_list else base
        fmt = list_of(check.length or 1) if is_list else str

        for bound, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            limit = getattr(check, bound)
            if limit is None:
                continue
            step = 1 if item is int else 0.5
            if bound == "ge":
                bad_value, good = limit - step, limit
            elif bound == "gt":
                bad_value, good = limit, limit + step
            elif bound == "le":
                bad_value, good = limit + step, limit
            else:
                bad_value, good = limit, limit - step
            if item is int:
                bad_value, good = int(bad_value), int(good)
            cases.append((f"{key}:{bound}", key, model, fmt(bad_value), fmt(good), f"expected a value {op} "))
        if check.choices is not None:
            cases.append((f"{key}:choices", key, model, fmt("no_such_choice"), None, "expected one of "))
    return cases


BOUNDS = bound_cases()


@pytest.mark.parametrize("case, key, model, bad, good, message", BOUNDS, ids=[c[0] for c in BOUNDS])
def test_an_out_of_range_value_for_every_constraint_is_named(tmp_path, capsys, case, key, model, bad, good, message):
    err, path = cli_error(tmp_path, capsys, yaml_for(key, bad, model))
    assert f"{path}: key '{key}'" in err and message in err, err
    if good is not None:  # the boundary itself is accepted by that field's own check
        try:
            load_config(write_config(tmp_path, yaml_for(key, good, model)))
        except ConfigError as e:
            assert f"key '{key}': {message}" not in str(e), f"{good} rejected by its own bound: {e}"


def test_the_generated_cases_cover_the_schema():
    """Every model's section is reached and every declared constraint yields a case (the generator is not vacuous)."""
    keys = {k for k, _ in FIELDS}
    assert {"solver.lr", "data.height", "test.ranks", "model.loss.triplet_margin", "model.erase_ratio",
            "model.block_size", "model.insertion_points", "model.drop_height_ratio"} <= keys
    assert len(BOUNDS) > 40
