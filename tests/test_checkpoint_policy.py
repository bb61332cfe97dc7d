"""What a run keeps (the ``checkpoint`` section): last.pth with the optimiser, weights-only epoch_XXX.pth (the newest
``keep_last``), model_best.pth written only when the chosen metric improves, also across a resume."""

import json
import os

import pytest
import torch

from esreid.config import load_config
from esreid.engine.checkpoint import load_checkpoint, load_trained_model, save_checkpoint
from esreid.engine.hooks import BestCheckpointHook
from esreid.engine.trainer import Trainer
from esreid.errors import ConfigError
from esreid.evaluation.metric_keys import MetricKey, declared


def test_periodic_checkpoints_hold_weights_only_and_the_newest_are_kept(tmp_path, tiny_config):
    cfg = tiny_config(epochs=3, extra=["checkpoint.keep_last=2"])
    Trainer(cfg, progress=False, log=lambda s: None).train()
    out = tmp_path / "run"
    assert sorted(n for n in os.listdir(out) if n.startswith("epoch_")) == ["epoch_002.pth", "epoch_003.pth"]
    assert load_checkpoint(str(out / "last.pth"))["optimizer"] is not None  # what --resume reads
    periodic = load_checkpoint(str(out / "epoch_003.pth"))
    assert periodic["optimizer"] is None and periodic["epoch"] == 3
    assert load_trained_model(cfg, str(out / "epoch_003.pth")).num_classes == periodic["num_classes"]
    # the weights are those of the end of epoch 3, the same as last.pth's
    last = load_checkpoint(str(out / "last.pth"))["model"]
    assert all(torch.equal(periodic["model"][k], last[k]) for k in last)


def test_model_best_is_the_best_evaluation_so_far(tmp_path, tiny_config):
    Trainer(tiny_config(epochs=3), progress=False, log=lambda s: None).train()
    out = tmp_path / "run"
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["type"] == "eval"]
    best = max(evals, key=lambda r: r["mAP"])  # max keeps the first of equal values: only improvements write
    state = load_checkpoint(str(out / "model_best.pth"))
    assert state["optimizer"] is None
    assert state["epoch"] == best["epoch"] and state["metrics"]["mAP"] == best["mAP"]
    assert torch.equal(state["model"]["head.classifier.weight"],
                       load_checkpoint(str(out / f"epoch_{best['epoch']:03d}.pth"))["model"]["head.classifier.weight"])


def test_full_periodic_checkpoints_can_be_resumed(tmp_path, tiny_config):
    Trainer(tiny_config(epochs=1, extra=["checkpoint.full=true"]), progress=False, log=lambda s: None).train()
    resumed = Trainer(tiny_config(epochs=2, out="b", extra=["checkpoint.full=true"]),
                      resume=str(tmp_path / "run" / "epoch_001.pth"), progress=False, log=lambda s: None)
    assert resumed.start_epoch == 1


class FakeTrainer:
    """What BestCheckpointHook uses of the trainer when there is no metrics.jsonl: ``start_epoch`` and
    ``save_checkpoint``, which records the metrics of the evaluation being saved (as the trainer does through
    ``state.metrics``)."""

    def __init__(self, start_epoch):
        self.start_epoch, self.saved, self.metrics = start_epoch, [], {}

    def save_checkpoint(self, path, full=True, epoch=None):
        assert epoch == self.metrics["epoch"]  # the evaluated epoch, also in a resume's catch-up evaluation
        self.saved.append((epoch, full))
        save_checkpoint(path, model=torch.nn.Linear(1, 1), epoch=epoch, config={},
                        metrics=self.metrics)


MAP = next(m for m in declared("market").keys if m.key == "mAP")


def feed(hook, values, first_epoch=1, key="mAP"):
    for epoch, value in enumerate(values, start=first_epoch):
        hook.trainer.metrics = {"epoch": epoch, key: value}
        hook.on_record({"type": "epoch", "epoch": epoch, key: 1.0})  # not an evaluation: ignored
        hook.on_record({"type": "eval", **hook.trainer.metrics})


def test_best_hook_writes_on_improvement_only_and_resumes_from_the_file(tmp_path):
    hook = BestCheckpointHook(str(tmp_path), MAP, full=False)
    hook.trainer = FakeTrainer(start_epoch=0)
    feed(hook, [0.5, 0.4, 0.6, 0.6])
    assert hook.trainer.saved == [(1, False), (3, False)]
    resumed = BestCheckpointHook(str(tmp_path), MAP)
    resumed.trainer = FakeTrainer(start_epoch=4)
    resumed.after_resume()  # as Trainer.resume() does; no metrics.jsonl: the value to beat is the file's
    feed(resumed, [0.55, 0.7], first_epoch=5)  # 0.55 does not beat the 0.6 model_best.pth records
    assert resumed.trainer.saved == [(6, False)]
    assert load_checkpoint(str(tmp_path / "model_best.pth"))["metrics"]["mAP"] == 0.7


def test_best_hook_follows_the_declared_direction(tmp_path):
    """A metric declared lower-is-better is kept at its minimum (a hook comparing with ``>`` keeps epochs 1, 2)."""
    hook = BestCheckpointHook(str(tmp_path), MetricKey("err", "error", higher_is_better=False))
    hook.trainer = FakeTrainer(start_epoch=0)
    feed(hook, [0.5, 0.6, 0.3, 0.4], key="err")
    assert hook.trainer.saved == [(1, False), (3, False)]


def test_best_metric_must_be_one_the_evaluation_reports():
    with pytest.raises(ConfigError, match=r"key 'checkpoint.best': expected one of mAP, mINP, R1, R5, R10, R20, mRR .*"
                                          r"got 'R3'"):
        load_config(None, ["checkpoint.best=R3"])
    assert load_config(None, ["checkpoint.best=R3", "test.ranks=[1,3]"]).checkpoint.best == "R3"
    assert load_config(None, ["checkpoint.best=''"]).checkpoint.best == ""


def evals_of(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "eval"]


def test_a_corrupt_model_best_is_recreated_before_a_resume_trains(tmp_path, tiny_config):
    """Before: the resume trained an epoch, then stopped with "checkpoint model_best.pth is corrupt" at its first
    evaluation. Now the file is re-created up front from the best epoch's checkpoint (epoch_XXX.pth or last.pth)."""
    Trainer(tiny_config(epochs=2), progress=False, log=lambda s: None).train()
    run = tmp_path / "run"
    raw = bytearray((run / "model_best.pth").read_bytes())
    raw[len(raw) // 2] ^= 1
    (run / "model_best.pth").write_bytes(raw)
    best = max(evals_of(run), key=lambda r: r["mAP"])
    lines = []
    Trainer(tiny_config(epochs=3), resume="auto", progress=False, log=lines.append).train()
    source = run / ("last.pth" if best["epoch"] == 2 else f"epoch_{best['epoch']:03d}.pth")
    assert (f"re-created {run / 'model_best.pth'} (epoch {best['epoch']}, mAP {best['mAP']:.4g}) from {source}: it "
            "was corrupt") in lines
    best = max(evals_of(run), key=lambda r: r["mAP"])  # epoch 3 may have beaten it since
    state = load_checkpoint(str(run / "model_best.pth"))
    assert (state["epoch"], state["metrics"]["mAP"], state["optimizer"]) == (best["epoch"], best["mAP"], None)
    periodic = load_checkpoint(str(run / f"epoch_{best['epoch']:03d}.pth"))
    assert all(torch.equal(state["model"][k], periodic["model"][k]) for k in periodic["model"])


def test_a_stale_model_best_without_the_weights_to_recreate_it_is_removed_then_rewritten(tmp_path, tiny_config):
    """metrics.jsonl (written first) says epoch 1 was best; model_best.pth holds another epoch and no checkpoint of
    epoch 1 is left (no periodic checkpoints): it is removed with a warning, the value to beat is epoch 1's, and the
    next evaluation that beats it writes the file."""
    Trainer(tiny_config(epochs=2, extra=["checkpoint.period=0"]), progress=False, log=lambda s: None).train()
    run = tmp_path / "run"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in lines:  # fake scores: epoch 1 the best, below anything a real evaluation gives
        if r["type"] == "eval":
            r["mAP"] = {1: -0.5, 2: -1.0}[r["epoch"]]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    held = load_checkpoint(str(run / "model_best.pth"))["epoch"]  # the real best, not epoch 1's faked score
    log = []
    Trainer(tiny_config(epochs=3, extra=["checkpoint.period=0"]), resume="auto", progress=False,
            log=log.append).train()
    assert [line for line in log if line.startswith("warning: ")] == [
        f"warning: {run / 'model_best.pth'} was stale (it holds epoch {held}), removed; no checkpoint of the best "
        "evaluation (epoch 1, mAP -0.5) is left to re-create it from: it is written again when an evaluation beats "
        "mAP -0.5"]
    state = load_checkpoint(str(run / "model_best.pth"))
    assert state["epoch"] == 3 and state["metrics"]["mAP"] == evals_of(run)[-1]["mAP"] >= 0
