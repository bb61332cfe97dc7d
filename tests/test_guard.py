"""The divergence guard: non-finite and exploding losses stop the run, the last good checkpoint is kept, healthy runs of
every model are never stopped."""

import math
import os
from types import SimpleNamespace

import pytest
import torch

from esreid.config import load_config
from esreid.engine.guard import DivergenceGuard, TrainingDiverged
from esreid.engine.hooks import HookBase, TrainState
from esreid.engine.trainer import Trainer
from esreid.errors import ConfigError
from esreid.models import MODELS

QUIET = {"progress": False, "log": lambda line: None}


def fake_trainer(factor=10.0, patience=3, amp="none"):
    """A guard on a trainer stand-in: feed it losses with ``step(guard, loss)``."""
    guard = DivergenceGuard(SimpleNamespace(divergence_factor=factor, patience=patience))
    guard.trainer = SimpleNamespace(state=TrainState(), cfg=SimpleNamespace(solver=SimpleNamespace(lr=0.5, amp=amp)),
                                    last_checkpoint=None, model=torch.nn.Linear(2, 2),
                                    continue_command=lambda extra: "esreid train --config c.yaml --resume auto " +
                                    " ".join(extra))
    return guard


def step(guard, loss, **terms):
    state = guard.trainer.state
    state.iter += 1
    state.terms = {**terms, "loss": loss}
    guard.after_step()


def test_rule_patience_consecutive_high_steps_against_the_first_loss():
    guard = fake_trainer(factor=10, patience=3)
    for loss in [4.0, 50.0, 4.0, 41.0, 39.0, 41.0, 1.0, 45.0, 45.0]:  # spikes and pairs above 40 do not stop it
        step(guard, loss)
    assert guard.reference == 4.0 and guard.streak == 2
    with pytest.raises(TrainingDiverged, match=r"^training diverged at epoch 1, iteration 10: the loss stayed above "
                                               r"10 x the untrained model's loss 4 for 3 steps \(loss=45\); no "
                                               r"checkpoint was written yet; lower solver.lr \(now 0.5\) or set "
                                               r"solver.grad_clip, then start again$"):
        step(guard, 45.0)


def test_an_epoch_ending_on_a_high_step_is_not_checkpointed():
    guard = fake_trainer(patience=100)
    step(guard, 2.0)
    guard.after_epoch()  # below: fine
    step(guard, 21.0)
    with pytest.raises(TrainingDiverged, match="the epoch ended with the loss above 10 x the untrained model's loss 2"):
        guard.after_epoch()


def test_non_finite_terms_and_weights():
    guard = fake_trainer(factor=0, amp="bf16")  # factor 0: the divergence rule is off, non-finite values still stop
    step(guard, 3.0, ce=1.0)
    step(guard, 1e30, ce=1e30)
    guard.trainer.last_checkpoint = ("out/last.pth", 4)
    with pytest.raises(TrainingDiverged, match=r"^non-finite loss at epoch 1, iteration 3 \(ce=nan, loss=1\); the "
                                               r"last good checkpoint out/last.pth \(epoch 4\) was kept; lower "
                                               r"solver.lr \(now 0.5\), set solver.amp=none or set solver.grad_clip, "
                                               r"then continue with: esreid train --config c.yaml --resume auto "
                                               r"--allow-changes solver solver.lr=<lower>$"):
        step(guard, 1.0, ce=math.nan)
    guard = fake_trainer()
    with torch.no_grad():
        guard.trainer.model.bias[0] = math.inf
    with pytest.raises(TrainingDiverged, match=r"non-finite weights at the end of the epoch \(bias\)"):
        guard.after_epoch()


@pytest.mark.parametrize("value, message", [
    ("1", "key 'guard.divergence_factor': expected 0 (off) or a factor > 1 of the untrained model's loss, got 1.0"),
    ("-2", "key 'guard.divergence_factor': expected a value >= 0, got -2.0"),
])
def test_factor_is_checked_at_load(value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [f"guard.divergence_factor={value}"])


@pytest.mark.parametrize("lr, stop", [
    (1e6, r"^training diverged at epoch 1, iteration 4: the loss stayed above 10 x the untrained model's loss 4.338 "
          r"for 3 steps \(ce=.*\); no checkpoint was written yet"),
    # lr=10 passes 10x within a few steps; the exact step depends on the machine's float summation order
    (10.0, r"^training diverged at epoch 1, iteration \d+: the loss stayed above 10 x"),
    (1e30, r"^non-finite loss at epoch 1, iteration 2 \(ce=nan, triplet=nan, loss=nan\); no checkpoint was written"),
])
def test_huge_learning_rates_stop_the_run_before_any_checkpoint(tmp_path, tiny_config, lr, stop):
    # before the guard: lr=1e6 finished with exit 0, losses near 1e12 and every checkpoint overwritten
    with pytest.raises(TrainingDiverged, match=stop):
        Trainer(tiny_config(epochs=2, extra=[f"solver.lr={lr:g}"]), **QUIET).train()
    assert not any(name.endswith(".pth") for name in os.listdir(tmp_path / "run"))


def test_divergence_after_a_good_epoch_keeps_its_checkpoint(tmp_path, tiny_config):
    first = Trainer(tiny_config(epochs=1), **QUIET)
    first.train()
    reference = next(h for h in first.hooks if isinstance(h, DivergenceGuard)).reference
    last = tmp_path / "run" / "last.pth"
    good = last.read_bytes()
    resumed = Trainer(tiny_config(epochs=3, extra=["solver.lr=1e6"]), resume="auto", allow_changes=["solver.lr"],
                      **QUIET)
    guard = next(h for h in resumed.hooks if isinstance(h, DivergenceGuard))
    assert guard.reference == reference  # the untrained model's loss, carried by the checkpoint
    with pytest.raises(TrainingDiverged) as e:
        resumed.train()
    assert str(e.value).startswith("training diverged at epoch 2, iteration ")
    assert (f"; the last good checkpoint {last} (epoch 1) was kept; lower solver.lr (now 1e+06) or set "
            f"solver.grad_clip, then continue with: esreid train --config {tmp_path / 'run' / 'config.yaml'} "
            "--resume auto --allow-changes solver solver.lr=<lower>") in str(e.value)
    assert last.read_bytes() == good and not (tmp_path / "run" / "epoch_002.pth").exists()


def test_patience_does_not_let_a_diverged_epoch_reach_its_checkpoint(tmp_path, tiny_config):
    cfg = tiny_config(epochs=2, extra=["solver.lr=1e6", "guard.patience=1000"])
    with pytest.raises(TrainingDiverged, match="^training diverged at epoch 1, iteration 11: the epoch ended with the "
                                               "loss above 10 x the untrained model's loss 4.338"):
        Trainer(cfg, **QUIET).train()
    assert not (tmp_path / "run" / "last.pth").exists()


class LossLog(HookBase):
    def __init__(self):
        self.losses = []

    def after_step(self):
        self.losses.append(self.trainer.state.terms["loss"])


SMALL = {"pmm": ["model.block_size=[1, 1]", "model.top_k=1"]}  # PMM's default 3x2 blocks exceed a 32x16 input's map


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS.names())
def test_healthy_runs_stay_far_below_the_threshold(tiny_config, name):
    """False positives: 3 epochs of every model over 3 seeds; no step's loss reaches even 2x the untrained model's
    (measured: at most 1.41x, BDB seed 2), a fifth of the default threshold."""
    for seed in range(3):
        trainer = Trainer(tiny_config(name, epochs=3, out=f"s{seed}", extra=[f"seed={seed}", *SMALL.get(name, [])]),
                          **QUIET)
        guard = next(h for h in trainer.hooks if isinstance(h, DivergenceGuard))
        log = LossLog()
        trainer.register_hooks([log])
        trainer.train()
        assert len(log.losses) == 3 * trainer.iters_per_epoch
        assert max(log.losses) < 2 * guard.reference, (name, seed, max(log.losses) / guard.reference)
