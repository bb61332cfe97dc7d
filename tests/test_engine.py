"""The trainer end to end on tiny synthetic people: learning, evaluation, exact resume, no overwrite."""

import json
import os

import pytest
import torch

from esreid.engine.checkpoint import load_checkpoint
from esreid.engine.trainer import Trainer


@pytest.mark.parametrize("name", ["baseline", "esnet"])
def test_train_writes_logs_checkpoints_and_metrics(tmp_path, name, tiny_config):
    cfg = tiny_config(name)
    metrics = Trainer(cfg, progress=False, log=lambda s: None).train()
    assert {"mAP", "R1", "mINP"} <= set(metrics) and 0.0 <= metrics["mAP"] <= 1.0
    out = tmp_path / "run"
    assert {"config.yaml", "metrics.jsonl", "last.pth", "epoch_001.pth", "epoch_002.pth", "results.json"} <= set(
        os.listdir(out))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "eval"] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if r["type"] == "train")
    state = load_checkpoint(str(out / "last.pth"))
    assert state["epoch"] == 2 and state["config"]["model"]["name"] == name


def test_refuses_to_overwrite_an_existing_run(tmp_path, tiny_config):
    cfg = tiny_config(epochs=1)
    Trainer(cfg, progress=False, log=lambda s: None).train()
    before = (tmp_path / "run" / "last.pth").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(cfg, progress=False, log=lambda s: None)
    assert (tmp_path / "run" / "last.pth").read_bytes() == before


@pytest.mark.parametrize("name", ["baseline", "esnet"])
def test_resume_equals_uninterrupted_run(tmp_path, name, tiny_config):
    straight = Trainer(tiny_config(name, epochs=2, out="a"), progress=False, log=lambda s: None)
    straight.train()
    first = Trainer(tiny_config(name, epochs=1, out="b"), progress=False, log=lambda s: None)
    first.train()
    resumed = Trainer(tiny_config(name, epochs=2, out="b"), resume="auto", progress=False,
                      log=lambda s: None)
    assert resumed.start_epoch == 1
    resumed.train()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_fig3_diagnostic_logs_the_erased_loss(tmp_path, tiny_config):
    cfg = tiny_config(epochs=1, extra=["diagnostics.erased_loss=true", "diagnostics.erase_ratio=0.3"])
    Trainer(cfg, progress=False, log=lambda s: None).train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert train and all(r["erased_loss"] > 0 for r in train)
    epoch = next(r for r in records if r["type"] == "epoch")
    assert "erased_loss" in epoch


def test_tensorboard_events_are_written(tmp_path, tiny_config):
    pytest.importorskip("tensorboard")
    cfg = tiny_config(epochs=1, extra=["tensorboard=true"])
    Trainer(cfg, progress=False, log=lambda s: None).train()
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_eval_command_reproduces_the_training_metrics(tmp_path, capsys, tiny_config):
    from esreid.cli import main

    cfg = tiny_config("esnet", epochs=1)
    metrics = Trainer(cfg, progress=False, log=lambda s: None).train()
    (tmp_path / "run.yaml").write_text((tmp_path / "run" / "config.yaml").read_text())
    capsys.readouterr()
    assert main(["eval", "--config", str(tmp_path / "run.yaml"), "--weights", str(tmp_path / "run" / "last.pth"),
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("mAP", "R1", "mINP"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6)


def test_fp16_on_cpu_trains_with_loss_scaling(tmp_path, tiny_config):
    # fp16 gradients underflow without loss scaling, on any device; the scaler state goes into the checkpoint
    trainer = Trainer(tiny_config(epochs=1, extra=["solver.amp=fp16"]), progress=False, log=lambda s: None)
    assert trainer.scaler.is_enabled()
    trainer.train()
    state = load_checkpoint(str(tmp_path / "run" / "last.pth"))
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_on_cuda(tmp_path, tiny_config):
    # RNG states must be CPU ByteTensors: a checkpoint mapped onto cuda made every GPU resume fail
    Trainer(tiny_config(epochs=1, extra=["device=cuda"]), progress=False, log=lambda s: None).train()
    resumed = Trainer(tiny_config(epochs=2, extra=["device=cuda"]), resume="auto", progress=False,
                      log=lambda s: None)
    assert resumed.start_epoch == 1
    resumed.train()


def test_resume_and_eval_do_not_read_the_pretrained_weights(tmp_path, tiny_config):
    # the checkpoint replaces every weight: a moved ImageNet file (or an offline URL) must not stop them
    from esreid.cli import main

    Trainer(tiny_config(epochs=1), progress=False, log=lambda s: None).train()
    gone = ["model.pretrained=/nonexistent/resnet.pth"]
    resumed = Trainer(tiny_config(epochs=2, extra=gone), resume="auto", progress=False, log=lambda s: None)
    assert resumed.start_epoch == 1
    (tmp_path / "run.yaml").write_text((tmp_path / "run" / "config.yaml").read_text())
    assert main(["eval", "--config", str(tmp_path / "run.yaml"), "--weights", str(tmp_path / "run" / "last.pth"),
                 *gone]) == 0


def test_metrics_log_has_no_records_of_interrupted_epochs(tmp_path, tiny_config):
    # records written after the checkpoint a run resumes from (or by a run that never checkpointed) are dropped
    def keys(out):
        lines = (tmp_path / out / "metrics.jsonl").read_text().splitlines()
        return [(r["type"], r["epoch"], r.get("iter")) for r in map(json.loads, lines)]

    Trainer(tiny_config(epochs=2, out="a"), progress=False, log=lambda s: None).train()
    Trainer(tiny_config(epochs=1, out="b"), progress=False, log=lambda s: None).train()
    crashed = json.dumps({"type": "train", "epoch": 2, "iter": 99, "loss": 1.0})
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # epoch 2 was cut short after logging
        f.write(crashed + "\n" + crashed[:20])  # ... and killed in the middle of a line
    Trainer(tiny_config(epochs=2, out="b"), resume="auto", progress=False, log=lambda s: None).train()
    assert keys("b") == keys("a")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.jsonl").write_text(crashed + "\n")  # a run that died before its first checkpoint
    Trainer(tiny_config(epochs=2, out="c"), progress=False, log=lambda s: None).train()
    assert keys("c") == keys("a")
