"""The command line: help texts, clear errors with exit code 2, and the quick demo end to end."""

import json

import pytest

from esreid.cli import build_parser, main


@pytest.mark.parametrize("argv", [[], ["demo"], ["train"], ["eval"], ["datasets", "check"]])
def test_help_lists_the_options(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: esreid" in out
    if argv[:1] == ["train"]:
        assert "--config" in out and "--resume" in out and "solver.lr=1e-4" in out


def test_subcommands_are_all_there():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"demo", "train", "eval", "datasets", "search", "visualize", "export", "extract"}


def test_config_error_is_reported_with_key_and_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("solver:\n  lrr: 1\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'solver.lrr'" in err and str(bad) in err


def test_missing_dataset_root_is_reported(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  name: market1501\n  root: {tmp_path / 'nowhere'}\noutput_dir: {tmp_path / 'o'}\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo_learns_well_above_chance(tmp_path, capsys):
    assert main(["demo", "--quick", "--no-progress", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "BoT baseline" in out and "ES-Net" in out and "chance" in out
    (result_file,) = tmp_path.glob("*/demo_results.json")
    results = json.loads(result_file.read_text())
    chance = results["chance (random features)"]["mAP"]
    for method in ("BoT baseline", "ES-Net"):
        assert results[method]["mAP"] > 3 * chance, (method, results[method]["mAP"], chance)


@pytest.mark.parametrize("name", ["search", "visualize"])
def test_delegated_commands_get_their_options(capsys, name):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "--query" in capsys.readouterr().out


def test_missing_pretrained_weights_are_reported(tmp_path, capsys):
    args = '{"num_train_ids": 8, "num_test_ids": 4, "images_per_id": 4, "height": 32, "width": 16}'
    argv = ["train", "--config", str(tmp_path / "c.yaml"), f"data.args={args}", "model.backbone=resnet_tiny",
            "model.pretrained=/nowhere/resnet.pth", "data.ids_per_batch=4", "data.instances=2", "device=cpu"]
    (tmp_path / "c.yaml").write_text(f"data:\n  root: {tmp_path / 'data'}\noutput_dir: {tmp_path / 'o'}\n")
    assert main(argv) == 2
    assert "/nowhere/resnet.pth" in capsys.readouterr().err


def test_datasets_cache_builds_what_training_reads(tmp_path, capsys):
    args = '{"num_train_ids": 6, "num_test_ids": 4, "images_per_id": 4, "height": 32, "width": 16}'
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  name: synthetic\n  root: {tmp_path / 'data'}\n  args: {args}\n  height: 16\n"
                   f"  width: 8\n  cache: true\n  ids_per_batch: 2\n  workers: 0\n")
    assert main(["datasets", "cache", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "train:" in out and "gallery:" in out
    cache_dir = tmp_path / "data" / ".esreid_cache"
    built = sorted(p.name for p in cache_dir.iterdir())
    assert len([n for n in built if n.endswith(".u8")]) == 3

    from esreid.config import load_config
    from esreid.data.base import build_dataset
    from esreid.data.loader import build_train_loader

    c = load_config(str(cfg))
    ds = build_dataset(c.data.name, c.data.root, **c.data.args)
    build_train_loader(c.data, ds.train)  # reuses the cache: no new files
    assert sorted(p.name for p in cache_dir.iterdir()) == built
