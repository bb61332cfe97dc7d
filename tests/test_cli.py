"""The command line: help texts and examples, parsing, the error policy (exit codes), lazy imports, the quick demo."""

import json
import os
import shlex
import subprocess
import sys

import pytest

import esreid
from esreid.cli import build_parser, main, parse_args
from esreid.commands import models as models_command
from esreid.commands import train as train_command
from esreid.commands.models import describe
from esreid.errors import EsreidError

CONFIG = "configs/market1501/esnet.yaml"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = [[name] for name, p in build_parser().commands.items() if p.commands]  # datasets, weights
COMMANDS = [[name, *sub] for name, p in build_parser().commands.items() for sub in ([[s] for s in p.commands] or [[]])]


def help_text(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [[]] + GROUPS + COMMANDS)
def test_every_help_screen_has_an_example_that_parses(capsys, monkeypatch, argv):
    out = help_text(argv, capsys)
    assert out.startswith("usage: esreid" + "".join(f" {a}" for a in argv))
    examples = out.split("examples:\n", 1)[1].splitlines()
    commands = [shlex.split(line) for line in examples if line.startswith("  esreid ")]
    assert commands and all(c[1:1 + len(argv)] == argv for c in commands)
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(os.path, "isfile", lambda p: True)  # the examples name files (W.pth) that need not exist
    monkeypatch.setattr(os.path, "isdir", lambda p: True)
    for c in commands:
        if len(c) > 1 + len(argv):  # a complete command line, not just 'esreid datasets ...'
            assert parse_args(c[1:]).handler is not None


def test_train_help_names_the_options(capsys):
    out = help_text(["train"], capsys)
    assert "--config" in out and "--resume auto|CKPT" in out and "KEY=VALUE" in out and "solver.lr=1e-4" in out


def test_subcommands_are_all_there():
    assert set(build_parser().commands) == {"demo", "train", "eval", "ablate", "datasets", "models", "search",
                                            "explain", "visualize", "export", "extract", "weights"}
    assert set(build_parser().commands["datasets"].commands) == {"check", "cache"}
    assert set(build_parser().commands["weights"].commands) == {"fetch"}
    assert len(COMMANDS) == 13  # every (sub)command's help screen is checked above


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"esreid {esreid.__version__}\n"


@pytest.mark.parametrize("argv", [
    ["train", "solver.lr=1e-3", "--config", CONFIG],
    ["train", "--config", CONFIG, "solver.lr=1e-3", "--resume", "auto", "data.root=/d"],
    ["train", "solver.lr=1e-3", "--no-progress", "data.root=/d", "--config", CONFIG, "--resume", "auto"],
])
def test_overrides_anywhere(monkeypatch, argv):
    monkeypatch.chdir(REPO)
    args = parse_args(argv)
    assert args.config == CONFIG and args.handler is train_command.run
    assert args.overrides == [t for t in argv if "=" in t]
    assert args.resume == ("auto" if "--resume" in argv else None)


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.rstrip("\n")


@pytest.mark.parametrize("argv, message", [
    ([], "esreid: error: the following arguments are required: COMMAND (see 'esreid --help')"),
    (["trian"], "esreid: error: argument COMMAND: invalid choice: 'trian'"),
    (["train"], "esreid: error: the following arguments are required: --config (see 'esreid train --help')"),
    (["train", "--config", CONFIG, "--resume", "solver.epochs=10"],
     "esreid: error: argument --resume: expected 'auto' or a checkpoint path, got the override 'solver.epochs=10' "
     "(write: --resume auto solver.epochs=10)"),
    (["train", "--config", CONFIG, "--resume"], "argument --resume: expected one argument"),
    (["train", "--config", CONFIG, "solver.lr=1", "--bogus"],
     "esreid: error: unrecognized arguments: --bogus (see 'esreid train --help')"),  # not the top-level usage
    (["train", "--config", CONFIG, "solver.lr"], "unexpected argument 'solver.lr' (config overrides look like"),
    (["train", "--config", "nowhere.yaml"], "esreid: error: argument --config: file not found: nowhere.yaml"),
    (["eval", "--config", CONFIG, "--weights", "configs"], "argument --weights: configs is a folder, expected a file"),
    (["demo", "a=1"], "esreid: error: unrecognized arguments: a=1 (see 'esreid demo --help')"),
    (["datasets", "check", "--root", "nowhere"], "argument --root: folder not found: nowhere"),
    (["datasets"], "the following arguments are required: SUBCOMMAND (see 'esreid datasets --help')"),
])
def test_usage_errors_are_one_line_and_exit_2(monkeypatch, capsys, argv, message):
    monkeypatch.chdir(REPO)
    assert main(argv) == 2
    assert message in one_error_line(capsys)


def test_usage_error_from_the_console_script():
    """The real process: exit status 2, one stderr line, nothing on stdout (no usage dump)."""
    proc = subprocess.run([sys.executable, "-m", "esreid.cli", "train", "--config"], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "esreid: error: argument --config: expected one argument (see 'esreid train --help')\n"


def raising(exc):
    def handler(args):
        raise exc

    return handler


@pytest.mark.parametrize("exc, code, line", [
    (EsreidError("data.root: /d has no market1501/; set data.root"), 2,
     "esreid: error: data.root: /d has no market1501/; set data.root"),
    (EsreidError("two\nlines"), 2, "esreid: error: two; lines"),
    (FileExistsError("output_dir o already holds a run; pass --resume auto"), 2,
     "esreid: error: output_dir o already holds a run; pass --resume auto"),
    (FileNotFoundError(2, "No such file or directory", "/x/y.jpg"), 2,
     "esreid: error: /x/y.jpg: No such file or directory"),
    (RuntimeError("shape mismatch"), 1,
     "esreid: internal error: RuntimeError: shape mismatch (rerun with --debug for the traceback; please report it)"),
    (KeyError("k"), 1,
     "esreid: internal error: KeyError: 'k' (rerun with --debug for the traceback; please report it)"),
])
def test_error_policy(monkeypatch, capsys, exc, code, line):
    monkeypatch.setattr(models_command, "run", raising(exc))
    assert main(["models"]) == code
    assert one_error_line(capsys) == line


@pytest.mark.parametrize("argv", [["--debug", "models"], ["models", "--debug"]])
def test_debug_shows_the_traceback(monkeypatch, capsys, argv):
    monkeypatch.setattr(models_command, "run", raising(RuntimeError("shape mismatch")))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and 'raise exc' in err
    assert err.endswith("esreid: internal error: RuntimeError: shape mismatch (please report it)\n")
    monkeypatch.setattr(models_command, "run", raising(EsreidError("fix it")))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("esreid: error: fix it\n")


def interrupt(hint=None, on_cause=False):
    e = KeyboardInterrupt()
    if hint and on_cause:
        cause = RuntimeError("stopped")
        cause.hint = hint
        e.__cause__ = cause
    elif hint:
        e.hint = hint
    return e


HINT = "interrupted at epoch 3, iteration 17; continue with: esreid train --config C --resume auto"


@pytest.mark.parametrize("exc, err", [
    (interrupt(), "esreid: interrupted\n"),
    (interrupt(HINT), f"esreid: interrupted\nesreid: {HINT}\n"),
    (interrupt(HINT, on_cause=True), f"esreid: interrupted\nesreid: {HINT}\n"),
])
def test_ctrl_c_exits_130_with_the_hint(monkeypatch, capsys, exc, err):
    monkeypatch.setattr(models_command, "run", raising(exc))
    assert main(["models"]) == 130
    assert capsys.readouterr().err == err


def test_closed_stdout_is_not_an_error(monkeypatch, capsys):
    monkeypatch.setattr(models_command, "run", raising(BrokenPipeError(32, "Broken pipe")))
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # restored after main() points it at os.devnull
    assert main(["models"]) == 0 and capsys.readouterr().err == ""


HEAVY = ["torch", "numpy", "matplotlib", "scipy", "PIL", "yaml", "faiss", "onnx", "onnxruntime", "tqdm",
         "esreid.models", "esreid.engine", "esreid.data", "esreid.evaluation", "esreid.config"]


def test_parser_and_help_import_nothing_heavy():
    """In a fresh interpreter: build the parser and print every help screen; none of HEAVY may be imported."""
    code = f"""
import contextlib, io, sys
import esreid.cli as cli
cli.build_parser()
for argv in {[[]] + COMMANDS + [["datasets"]]!r}:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(argv + ["--help"])
        except SystemExit:
            pass
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_models_lists_every_registry(capsys):
    from esreid.data.base import DATASETS
    from esreid.evaluation.protocols import PROTOCOLS
    from esreid.evaluation.search import INDEX_KINDS
    from esreid.models import MODELS
    from esreid.models.backbones import BACKBONES
    from esreid.models.pooling import POOLING

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    sections = {}
    for line in out.splitlines():
        if not line.startswith(" "):
            title = line.rstrip(":")
            sections[title] = {}
        else:
            name, text = line.strip().split(None, 1)
            sections[title][name] = text
    registries = [MODELS, BACKBONES, POOLING, DATASETS, PROTOCOLS, INDEX_KINDS]
    assert len(sections) == len(registries)
    for (title, listed), registry in zip(sections.items(), registries):
        assert sorted(listed) == registry.names(), title
    assert sections["poolings (model.pooling)"]["gap"] == POOLING.get("gap").__doc__.splitlines()[0]
    assert sections["datasets (data.name)"]["market1501"] == "Market-1501 (Zheng et al., ICCV 2015)."  # module's


def test_describe_uses_the_docstring_or_a_module_of_its_own():
    import types

    mod = types.ModuleType("fake_mod", "Module summary.\n\nDetails.")
    sys.modules["fake_mod"] = mod
    try:
        def documented():
            """First line.
            Second line."""

        def bare():
            pass

        def other():
            pass

        for f in (documented, bare, other):
            f.__module__ = "fake_mod"
        assert describe(documented, [documented, bare, other]) == "First line."
        assert describe(bare, [bare, print]) == "Module summary."  # the only one registered from its module
        assert describe(bare, [bare, other]) == "(no description)"  # the module describes several
    finally:
        del sys.modules["fake_mod"]


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
    run = result_file.parent  # one report per model, and the comparison page linking them, its path printed
    comparison = (run / "comparison.html").read_text(encoding="utf-8")
    assert f"comparison of the two models (metrics, CMC, explanations; links to each report): {run}" in out
    for folder in ("baseline", "esnet"):
        assert (run / folder / "report.html").is_file() and f'href="{folder}/report.html"' in comparison
    assert 'alt="CMC"' in comparison and "rank-1 differs between the models" in comparison


@pytest.mark.parametrize("name", ["search", "explain", "visualize"])
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


def test_a_command_is_one_module(tmp_path, monkeypatch, capsys):
    """A module in esreid/commands with ORDER, add_parser and run is a command: listed in --help at its ORDER and run
    by main, with nothing else edited (modules whose name starts with _ are not commands)."""
    import esreid.commands

    (tmp_path / "hello.py").write_text(
        "from esreid.commands._args import command\nORDER = 15\n"
        "def add_parser(sub):\n    command(sub, 'hello', 'say hello', ['esreid hello'], handler=run)\n"
        "def run(args):\n    print('hello from a plugged-in command')\n    return 0\n")
    (tmp_path / "_helper.py").write_text("raise AssertionError('not a command')\n")
    monkeypatch.setattr(esreid.commands, "__path__", [*esreid.commands.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "esreid.commands.hello", raising=False)
    names = list(build_parser().commands)
    assert names[names.index("demo") + 1] == "hello"  # ORDER 15: between demo (10) and train (20)
    assert main(["hello"]) == 0 and capsys.readouterr().out == "hello from a plugged-in command\n"
    monkeypatch.delitem(sys.modules, "esreid.commands.hello")
