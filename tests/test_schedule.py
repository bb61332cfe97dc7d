"""The lr schedule against the ES-Net recipe (docs/methods.md §1.6) and the optimiser's weight-decay groups."""

import pytest
import torch

from esreid.config import SolverConfig
from esreid.engine.schedule import build_optimizer, build_scheduler, lr_factor


def test_esnet_recipe_by_hand():
    # 10 iterations per epoch, warm-up 10 epochs from 0, decay x0.1 at epochs 40 and 70 (0-based).
    f = lambda it: lr_factor(it, 10, 10, 0.0, [40, 70], 0.1)  # noqa: E731
    assert f(0) == pytest.approx(1 / 100)
    assert f(49) == pytest.approx(50 / 100)
    assert f(99) == pytest.approx(1.0)
    assert f(100) == 1.0 and f(399) == 1.0
    assert f(400) == pytest.approx(0.1) and f(699) == pytest.approx(0.1)
    assert f(700) == pytest.approx(0.01) and f(1199) == pytest.approx(0.01)


def test_warmup_factor_start():
    assert lr_factor(0, 100, 1, 0.01, [5], 0.1) == pytest.approx(0.01 + 0.99 * 0.01)


def test_scheduler_drives_the_optimizer_and_excludes_no_decay_params():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))
            self.l = torch.nn.Parameter(torch.ones(1))

        def no_weight_decay(self):
            return {"l"}

        def lr_multipliers(self):
            return {}

        def sgd_params(self):
            return {}

    cfg = SolverConfig(lr=1.0, warmup_epochs=1, milestones=[1], epochs=2)
    model = M()
    opt = build_optimizer(model, cfg)
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.weight_decay, 0.0]
    assert opt.param_groups[1]["params"][0] is model.l
    sched = build_scheduler(opt, cfg, iters_per_epoch=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.1, 0.1, 0.1, 0.1])


def test_a_pooling_exponent_with_its_own_lr_multiplier_gets_a_scheduled_group_of_its_own():
    """``model.ppool_lr_mult``: the P-pooling exponent trains at that multiple of solver.lr, with the same warm-up and
    decay, undecayed; every other parameter keeps solver.lr."""
    from esreid.models.baseline import Baseline, BaselineConfig

    model = Baseline(BaselineConfig(backbone="resnet_tiny", pooling="ppool", ppool_lr_mult=50.0), num_classes=3)
    cfg = SolverConfig(lr=1e-3, warmup_epochs=1, milestones=[1], epochs=2)
    opt = build_optimizer(model, cfg)
    (own,) = [g for g in opt.param_groups if any(p is model.head.pool.raw for p in g["params"])]
    assert len(own["params"]) == 1 and own["weight_decay"] == 0.0
    others = [g for g in opt.param_groups if g is not own]
    assert [len(g["params"]) for g in others] == [sum(p.requires_grad for p in model.parameters()) - 1]
    sched = build_scheduler(opt, cfg, iters_per_epoch=2)
    for _ in range(3):
        opt.step()
        sched.step()
    assert own["lr"] == pytest.approx(50 * others[0]["lr"]) and others[0]["lr"] == pytest.approx(1e-4)
