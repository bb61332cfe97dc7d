"""Resume safety: config drift is refused unless allowed, allowed changes are really applied, keys that do not change
the run really do not, finished runs re-report, a missing evaluation or periodic checkpoint is redone on resume."""

import json
import os

import pytest
import torch

from esreid.cli import main, parse_args
from esreid.config import Config, to_dict
from esreid.engine.checkpoint import load_checkpoint
from esreid.engine.resume import NON_RUN_KEYS, RENAMED_KEYS, flatten, run_changes
from esreid.engine.schedule import lr_factor
from esreid.engine.trainer import Trainer
from esreid.errors import ConfigError

QUIET = {"progress": False, "log": lambda line: None}


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def one_epoch(tmp_path, tiny_config):
    """A finished 1-epoch run in tmp_path/run; returns the bytes of its last.pth and config.yaml."""
    Trainer(tiny_config(epochs=1), **QUIET).train()
    run = tmp_path / "run"
    return (run / "last.pth").read_bytes(), (run / "config.yaml").read_text()


def test_run_changing_differences_are_refused_and_listed(tmp_path, tiny_config, one_epoch):
    changed = ["solver.lr=0.01", "solver.optimizer=sgd", "data.height=64", "seed=3", "model.loss.triplet_margin=0.5"]
    with pytest.raises(ConfigError) as e:
        Trainer(tiny_config(epochs=2, extra=changed), resume="auto", **QUIET)
    assert str(e.value) == (
        f"resuming {tmp_path / 'run' / 'last.pth'} with a config that changes the run: model.loss.triplet_margin 0.3 "
        "-> 0.5; data.height 32 -> 64; solver.optimizer 'adam' -> 'sgd'; solver.lr 0.001 -> 0.01; seed 0 -> 3; the "
        "checkpoint was trained with the old values: keep them, or continue with the new ones by adding "
        "--allow-changes model.loss.triplet_margin data.height solver.optimizer solver.lr seed, or start a new run in "
        "another output_dir")
    # refused before anything was written: config.yaml still records the run's own config
    assert ((tmp_path / "run" / "last.pth").read_bytes(), (tmp_path / "run" / "config.yaml").read_text()) == one_epoch
    with pytest.raises(ConfigError, match="by adding --allow-changes solver.optimizer,"):  # the others allowed
        Trainer(tiny_config(epochs=2, extra=changed), resume="auto", allow_changes=["solver.lr", "data", "seed",
                                                                                      "model.loss"], **QUIET)


def test_an_allowed_lr_change_is_applied_and_recorded(tmp_path, tiny_config, one_epoch):
    # before: the checkpoint's lr silently won while config.yaml claimed the new one
    trainer = Trainer(tiny_config(epochs=2, extra=["solver.lr=0.01"]), resume="auto", allow_changes=["solver.lr"],
                      **QUIET)
    it = trainer.iters_per_epoch
    expected = 0.01 * lr_factor(it, it, 1, 0.0, [1], 0.1)
    assert trainer.scheduler.base_lrs == [0.01] and trainer.lr() == expected
    assert "lr: 0.01" in (tmp_path / "run" / "config.yaml").read_text()
    trainer.train()
    assert load_checkpoint(str(tmp_path / "run" / "last.pth"))["config"]["solver"]["lr"] == 0.01


def test_an_allowed_optimizer_change_starts_its_state_afresh(tmp_path, tiny_config, one_epoch):
    # before: KeyError: 'momentum'
    trainer = Trainer(tiny_config(epochs=2, extra=["solver.optimizer=sgd", "solver.momentum=0.5"]), resume="auto",
                      allow_changes=["solver"], **QUIET)
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.5 and not trainer.optimizer.state
    assert trainer.train()["mAP"] >= 0


def test_unchanged_config_resumes_bit_identically_through_the_solver_reset(tmp_path, tiny_config):
    straight = Trainer(tiny_config(epochs=2, out="a", extra=["solver.optimizer=sgd"]), **QUIET)
    straight.train()
    Trainer(tiny_config(epochs=1, out="b", extra=["solver.optimizer=sgd"]), **QUIET).train()
    resumed = Trainer(tiny_config(epochs=2, out="b", extra=["solver.optimizer=sgd"]), resume="auto", **QUIET)
    resumed.train()
    assert_same_weights(weights(straight), weights(resumed))
    assert straight.optimizer.state_dict()["param_groups"] == resumed.optimizer.state_dict()["param_groups"]


def test_keys_that_do_not_change_the_run_really_do_not(tmp_path, tiny_config):
    """Resuming with the keys of NON_RUN_KEYS changed gives the uninterrupted run's weights bit for bit (all but
    device, solver.channels_last: the same computation, rounded differently; tensorboard: slow to import)."""
    straight = Trainer(tiny_config(epochs=2, out="a"), **QUIET)
    straight.train()
    Trainer(tiny_config(epochs=1, out="b"), **QUIET).train()
    free = ["log_period=3", "checkpoint.period=2", "test.eval_period=2", "test.flip=false", "test.rerank=true",
            "data.test_batch_size=7", "data.workers=1", "diagnostics.erased_loss=true", "guard.patience=9",
            f"data.cache_dir={tmp_path / 'cache'}", "data.cache=true",
            "model.pretrained=/gone.pth"]
    resumed = Trainer(tiny_config(epochs=2, out="b", extra=free), resume="auto", **QUIET)
    resumed.train()
    assert_same_weights(weights(straight), weights(resumed))


def test_non_run_keys_name_real_keys():
    keys = flatten(to_dict(Config()))
    for name in [*NON_RUN_KEYS, *RENAMED_KEYS.values()]:
        assert any(k == name or k.startswith(name + ".") for k in keys), name
    assert not set(RENAMED_KEYS) & set(keys)


def test_a_renamed_key_of_an_older_checkpoint_compares_under_its_new_name():
    current = to_dict(Config())
    older = {k: v for k, v in current.items() if k != "checkpoint"}
    older["checkpoint_period"] = 40  # an esreid 0.1 checkpoint's config
    assert run_changes(older, current) == []
    older["solver"] = {**current["solver"], "lr": 1.0}
    assert [k for k, _, _ in run_changes(older, current)] == ["solver.lr"]


@pytest.mark.parametrize("kwargs, message", [
    ({"resume": "auto", "allow_changes": ["solver.lrr"]},
     "--allow-changes: 'solver.lrr' is not a config key or section (e.g. solver.lr, solver)"),
    ({"allow_changes": ["solver.lr"]},
     "--allow-changes names what a resumed run may change; add --resume auto (or a checkpoint path)"),
])
def test_allow_changes_mistakes(tiny_config, one_epoch, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Trainer(tiny_config(epochs=2, out="run" if kwargs.get("resume") else "new"), **kwargs, **QUIET)


def test_allow_changes_gives_back_the_overrides_it_swallows(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("{}")
    args = parse_args(["train", "a=1", "--config", str(config), "--allow-changes", "solver.lr", "solver", "a=2",
                       "--resume", "auto", "a=3", "--allow-changes", "seed", "a=4"])
    assert args.allow_changes == ["solver.lr", "solver", "seed"] and args.overrides == ["a=1", "a=2", "a=3", "a=4"]


def test_a_finished_run_says_so_and_reports_its_results(tmp_path, tiny_config, capsys):
    # before: a checkpoint at epoch >= solver.epochs printed an empty "final:" and exited 0
    Trainer(tiny_config(epochs=2), **QUIET).train()
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").unlink()
    for epochs in (2, 1):
        assert main(["train", "--config", str(run / "config.yaml"), "--resume", "auto", "--no-progress",
                     f"solver.epochs={epochs}"]) == 0
        out = capsys.readouterr().out
        assert (f"=> the run in {run} is finished: its checkpoint is at epoch 2 and solver.epochs is {epochs} (raise "
                "it to train longer)\n") in out
        assert out.endswith(f"final: mAP {100 * results['mAP']:.1f}  mINP {100 * results['mINP']:.1f}  "
                            f"R1 {100 * results['R1']:.1f}  R5 {100 * results['R5']:.1f}  "
                            f"R10 {100 * results['R10']:.1f}  R20 {100 * results['R20']:.1f}  "
                            f"mRR {100 * results['mRR']:.1f}\n")
        assert json.loads((run / "results.json").read_text()) == results  # re-created from the recorded evaluation


class StopDuringEvaluation(Exception):
    pass


def stopping_evaluate(at_epoch):
    real = Trainer.evaluate

    def evaluate(self):
        if self.state.epoch + 1 == at_epoch:
            raise StopDuringEvaluation
        return real(self)

    return evaluate


def eval_epochs(run):
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["type"] == "eval"]


@pytest.mark.parametrize("epochs", [3, 2])
def test_an_evaluation_cut_short_runs_first_on_resume(tmp_path, tiny_config, monkeypatch, epochs):
    """A run stopped during the evaluation of epoch 2 (mid-run, or its last epoch) evaluates epoch 2 first on resume
    and ends with the uninterrupted run's records and results."""
    straight = Trainer(tiny_config(epochs=epochs, out="a"), **QUIET)
    expected = straight.train()
    with monkeypatch.context() as m:
        m.setattr(Trainer, "evaluate", stopping_evaluate(2))
        with pytest.raises(StopDuringEvaluation):
            Trainer(tiny_config(epochs=epochs, out="b"), **QUIET).train()
    run = tmp_path / "b"
    assert eval_epochs(run) == [1] and not (run / "results.json").exists()
    metrics = Trainer(tiny_config(epochs=epochs, out="b"), resume="auto", **QUIET).train()
    assert eval_epochs(run) == list(range(1, epochs + 1))
    assert {k: v for k, v in metrics.items() if k != "eval_seconds"} == {
        k: v for k, v in expected.items() if k != "eval_seconds"}
    assert json.loads((run / "results.json").read_text())["mAP"] == expected["mAP"]


def test_a_lost_periodic_checkpoint_is_recreated_on_resume(tmp_path, tiny_config):
    Trainer(tiny_config(epochs=2), **QUIET).train()
    run = tmp_path / "run"
    os.remove(run / "epoch_002.pth")
    Trainer(tiny_config(epochs=3), resume="auto", **QUIET).train()
    assert sorted(p.name for p in run.glob("epoch_*.pth")) == ["epoch_001.pth", "epoch_002.pth", "epoch_003.pth"]
    assert load_checkpoint(str(run / "epoch_002.pth"))["epoch"] == 2
