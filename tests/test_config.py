"""Config loading: _base_ inheritance, overrides, and errors that name the key and the file."""

import pytest

from esreid.config import Config, ConfigError, load_config, parse_override


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_defaults_without_file():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.solver.milestones == [40, 70] and cfg.model.name == "baseline"


def test_base_inheritance_and_deep_merge(tmp_path):
    write(tmp_path, "_base_/a.yaml", "solver:\n  lr: 0.1\n  epochs: 5\ndata:\n  height: 32\n")
    child = write(tmp_path, "x/child.yaml",
                  "_base_: ../_base_/a.yaml\nsolver:\n  epochs: 7\n  milestones: [5]\n  warmup_epochs: 1\n")
    cfg = load_config(child)
    assert cfg.solver.lr == 0.1 and cfg.solver.epochs == 7 and cfg.data.height == 32
    assert cfg.data.width == 128  # untouched default


def test_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(None, ["solver.lr=1e-3", "solver.milestones=[2,4]", "test.flip=false", "data.args={seed: 1}"])
    assert cfg.solver.lr == pytest.approx(1e-3) and cfg.solver.milestones == [2, 4]
    assert cfg.test.flip is False and cfg.data.args == {"seed": 1}
    assert parse_override("output_dir=out/x") == ("output_dir", "out/x")


def test_int_accepted_for_float_but_not_reverse():
    assert load_config(None, ["solver.lr=1"]).solver.lr == 1.0
    with pytest.raises(ConfigError, match=r"command line: key 'solver.epochs': expected an integer, got 1.5"):
        load_config(None, ["solver.epochs=1.5"])


def test_unknown_key_names_key_and_file(tmp_path):
    base = write(tmp_path, "base.yaml", "solver:\n  lrr: 0.1\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(child)
    assert "solver.lrr" in str(e.value) and base in str(e.value)


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "c.yaml", "data:\n  height: tall\n")
    with pytest.raises(ConfigError, match=r"c.yaml: key 'data.height': expected an integer, got 'tall'"):
        load_config(path)
    path = write(tmp_path, "d.yaml", "test:\n  flip: 1\n")
    with pytest.raises(ConfigError, match=r"d.yaml: key 'test.flip': expected true/false"):
        load_config(path)
    path = write(tmp_path, "e.yaml", "solver:\n  milestones: [1, x]\n")
    with pytest.raises(ConfigError, match=r"key 'solver.milestones\[1\]'"):
        load_config(path)


def test_choices_and_model_name_are_checked(tmp_path):
    path = write(tmp_path, "c.yaml", "solver:\n  amp: fp8\n")
    with pytest.raises(ConfigError, match=r"c.yaml: key 'solver.amp': expected one of"):
        load_config(path)
    path = write(tmp_path, "m.yaml", "model:\n  name: nosuchnet\n")
    with pytest.raises(ConfigError, match=r"m.yaml: key 'model.name': unknown model 'nosuchnet'"):
        load_config(path)


def test_model_section_validated_against_the_models_own_schema(tmp_path):
    path = write(tmp_path, "m.yaml", "model:\n  name: baseline\n  erase_ratio: 0.2\n")
    with pytest.raises(ConfigError, match=r"m.yaml: unknown key 'model.erase_ratio'"):
        load_config(path)


def test_missing_file_and_cycle(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(str(tmp_path / "a.yaml"))


def test_triplet_needs_two_instances():
    with pytest.raises(ConfigError, match="data.instances"):
        load_config(None, ["data.instances=1"])
    assert load_config(None, ["data.instances=1", "model.loss.triplet_weight=0"]).data.instances == 1


def test_sections_created_by_an_override_are_blamed_on_the_command_line():
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'foo'"):
        load_config(None, ["foo.bar=1"])
    with pytest.raises(ConfigError, match=r"^command line: key 'solver.lr': expected a number"):
        load_config(None, ["solver.lr.x=5"])


@pytest.mark.parametrize("value", ["[baseline]", "{a: 1}", "3"])
def test_non_string_model_name_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"command line: key 'model.name': expected a string"):
        load_config(None, [f"model.name={value}"])


def test_unknown_dataset_option_is_named(tmp_path):
    from esreid.data.base import DatasetError, build_dataset

    with pytest.raises(DatasetError, match=r"dataset 'market1501': data.args: bad option .*labeled.*accepts: "
                                           r"distractors_500k$"):
        build_dataset("market1501", str(tmp_path), labeled=True)


@pytest.mark.parametrize("key", ["log_period", "checkpoint.period", "checkpoint.keep_last", "test.eval_period",
                                 "data.workers"])
def test_negative_periods_are_rejected(key):
    with pytest.raises(ConfigError, match=rf"command line: key '{key}': expected a value >= 0, got -1"):
        load_config(None, [f"{key}=-1"])


# --- inputs that would exhaust memory or the stack (issue 21) ---------------------------------------------------------
def laughs(levels, width=4):
    """A mapping "billion laughs": anchor i holds ``width`` aliases of anchor i-1, so the last one expands into
    ``width ** levels`` copies of the first while the file stays a few hundred bytes."""
    lines = ["  a0: &a0 {x: 1, y: 2}"]
    lines += [f"  a{i}: &a{i} {{" + ", ".join(f"k{j}: *a{i - 1}" for j in range(width)) + "}" for i in range(1, levels)]
    return "test:\n  protocol_args:\n" + "\n".join("  " + line for line in lines) + "\n"


def test_alias_expansion_is_bounded(tmp_path):
    """4**9 = 262,144 copies (the 7.7 GB bomb is the same document with more levels): refused from the node graph,
    before anything is merged; today's loader expands it in the merge and fails later on an unrelated key."""
    path = write(tmp_path, "bomb.yaml", laughs(10))
    with pytest.raises(ConfigError, match=r"bomb.yaml: YAML document refused: expands into more than 100,000 nodes "
                                          r"once its aliases are replaced \(line \d+\)"):
        load_config(path)
    assert "refused" not in str(pytest.raises(ConfigError, load_config, write(tmp_path, "ok.yaml", laughs(3))).value)


def test_self_referring_alias_is_refused(tmp_path):
    path = write(tmp_path, "loop.yaml", "data:\n  args: &a {x: *a}\n")
    with pytest.raises(ConfigError, match=r"loop.yaml: YAML document refused: an alias refers to a node that "
                                          r"contains it"):
        load_config(path)


def test_deep_yaml_is_refused_not_a_recursion_error(tmp_path):
    path = write(tmp_path, "deep.yaml", "data:\n  args:\n    x: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep.yaml: YAML document refused: nested deeper than 50 levels "
                                          r"\(at line 3, column \d+\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"command line: override 'data.args': YAML value refused: nested deeper"):
        load_config(None, ["data.args={x: " + "[" * 5000 + "]" * 5000 + "}"])


def test_latin1_config_names_the_byte_and_line(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes("solver:\n  lr: 0.1  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.yaml: not UTF-8 text \(byte 0xe9 on line 2, e.g. a Latin-1 "
                                          r"accent\): save the file as UTF-8"):
        load_config(str(path))
