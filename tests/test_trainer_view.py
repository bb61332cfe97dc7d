"""Hooks see the trainer through :class:`TrainerView` only; their state goes into checkpoints under their own name
(older checkpoints keyed it by class name); an evaluation's record comes with its test cases' results (features
included)."""

from __future__ import annotations

import ast
import inspect
import os

import pytest
import torch

from esreid.engine import hooks as H
from esreid.engine.checkpoint import atomic_save, load_checkpoint
from esreid.engine.guard import DivergenceGuard
from esreid.engine.trainer import Trainer

ENGINE = os.path.dirname(H.__file__)
HOOK_MODULES = ("hooks.py", "guard.py", "diagnostics.py", "reporting.py")
QUIET = {"progress": False, "log": lambda line: None}


def view_members():
    names = set(inspect.get_annotations(H.TrainerView))
    return names | {n for n, v in vars(H.TrainerView).items() if callable(v) and not n.startswith("_")}


def trainer_uses(path):
    """``(line, attribute)`` of every ``self.trainer.X`` and ``t.X`` (``t = self.trainer``) in a hook module."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = node.value
            is_trainer = (isinstance(base, ast.Attribute) and base.attr == "trainer"
                          and isinstance(base.value, ast.Name) and base.value.id == "self")
            if is_trainer or (isinstance(base, ast.Name) and base.id == "t"):
                found.append((node.lineno, node.attr))
    return found


def test_hooks_use_only_the_declared_view():
    """A hook reading an undeclared trainer attribute (``t.optimizer``, ``t.train_loader``) fails here."""
    allowed = view_members()
    bad = [f"{name}:{line}: trainer.{attr}" for name in HOOK_MODULES
           for line, attr in trainer_uses(os.path.join(ENGINE, name)) if attr not in allowed]
    assert not bad, bad
    assert len({attr for name in HOOK_MODULES for _, attr in trainer_uses(os.path.join(ENGINE, name))}) >= 10


def test_the_trainer_provides_the_view():
    source = inspect.getsource(Trainer)
    for name in view_members():
        assert hasattr(Trainer, name) or f"self.{name} =" in source or f"self.{name}: " in source, name


class Recorder(H.HookBase):
    """Sees every eval record and the case results (with their features) that came with it."""

    def __init__(self):
        self.evals = []

    def on_eval(self, record, results):
        self.evals.append((record["epoch"], record["mAP"], [(r.case.name, r.metrics["mAP"], len(r.features.query[0]),
                                                             len(r.features.gallery[0])) for r in results]))


def test_eval_records_come_with_their_features(tiny_config):
    recorder = Recorder()
    trainer = Trainer(tiny_config(epochs=2, extra=["test.eval_period=1", "test.occlusion=[none,lower:0.5]"]),
                      hooks=[recorder], **QUIET)
    trainer.train()
    nq, ng = len(trainer.dataset.query), len(trainer.dataset.gallery)
    assert [(e, m) for e, m, _ in recorder.evals] == [(h["epoch"], h["mAP"]) for h in trainer.history]
    assert len(recorder.evals) == 2
    for epoch, _, cases in recorder.evals:
        record = next(h for h in trainer.history if h["epoch"] == epoch)
        # one result per test case, in order, each with the features of the whole query and gallery split
        assert [(name, m) for name, m, _, _ in cases] == [(n, c["mAP"]) for n, c in record["cases"].items()]
        assert [name for name, *_ in cases] == ["synthetic", "synthetic@lower:0.5"]
        assert all((q, g) == (nq, ng) for *_, q, g in cases)


@pytest.mark.parametrize("key", ["guard", "DivergenceGuard"])
def test_hook_state_is_saved_under_its_name_and_older_class_keys_load(tmp_path, tiny_config, key):
    first = Trainer(tiny_config(epochs=1), **QUIET)
    first.train()
    last = tmp_path / "run" / "last.pth"
    state = load_checkpoint(str(last), map_location="cpu")
    assert set(state["hooks"]) == {"guard"}
    reference = state["hooks"]["guard"]["reference"]
    if key != "guard":  # as written before hooks had names
        state["hooks"] = {key: state["hooks"]["guard"]}
        atomic_save(state, str(last))
    resumed = Trainer(tiny_config(epochs=2), resume="auto", **QUIET)
    guard = next(h for h in resumed.hooks if isinstance(h, DivergenceGuard))
    assert guard.reference == reference


def test_a_hook_with_state_needs_a_name(tiny_config):
    class Counter(H.HookBase):
        def state_dict(self):
            return {"n": torch.tensor(1)}

    trainer = Trainer(tiny_config(epochs=1), hooks=[Counter()], **QUIET)
    with pytest.raises(ValueError, match="Counter has state to checkpoint but no name of its own"):
        trainer.hook_states()


def test_after_resume_comes_once_on_resume_with_the_restored_run(tiny_config):
    """A resumed trainer calls ``after_resume`` once, with ``start_epoch`` and ``last_checkpoint`` of the checkpoint
    already set and before any ``before_train`` (what BestCheckpointHook's reconcile relies on); a fresh one never."""

    class Seen(H.HookBase):
        def __init__(self):
            self.calls = []

        def after_resume(self):
            self.calls.append(("after_resume", self.trainer.start_epoch, self.trainer.last_checkpoint))

        def before_train(self):
            self.calls.append(("before_train",))

    fresh = Seen()
    Trainer(tiny_config(epochs=1), hooks=[fresh], **QUIET).train()
    assert fresh.calls == [("before_train",)]
    resumed = Seen()
    trainer = Trainer(tiny_config(epochs=2), resume="auto", hooks=[resumed], **QUIET)
    last = os.path.join(trainer.out, "last.pth")
    assert resumed.calls == [("after_resume", 1, (last, 1))]
    trainer.train()
    assert resumed.calls == [("after_resume", 1, (last, 1)), ("before_train",)]
