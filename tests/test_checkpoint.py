"""Checkpoints: exact round trip, RNG restore, atomic writes, named errors."""

import os
import random

import numpy as np
import pytest
import torch

from esreid.engine.checkpoint import (
    CheckpointError,
    atomic_save,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    set_rng_state,
)


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def test_round_trip_restores_model_optimizer_and_rng(tmp_path):
    model = small_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    path = str(tmp_path / "ck.pth")
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(path, model=model, epoch=7, config={"a": 1}, optimizer=opt)
    expected = (random.random(), np.random.rand(), torch.rand(1))

    state = load_checkpoint(path)
    assert state["epoch"] == 7 and state["config"] == {"a": 1}
    other = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    load_model_weights(other, state, path)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    opt2 = torch.optim.Adam(other.parameters(), lr=0.1)
    opt2.load_state_dict(state["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_mismatch_names_keys_and_file(tmp_path):
    path = str(tmp_path / "ck.pth")
    save_checkpoint(path, model=small_model(), epoch=1, config={})
    wrong = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5))
    with pytest.raises(CheckpointError, match=r"ck.pth.*shape mismatches 0.weight: file \(3, 4\) vs model \(5, 4\)"):
        load_model_weights(wrong, load_checkpoint(path), path)


def test_garbage_and_missing_files_are_named(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth: not a readable checkpoint"):
        load_checkpoint(str(bad))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(str(tmp_path / "none.pth"))


def test_interrupted_save_keeps_previous_file(tmp_path):
    path = str(tmp_path / "ck.pth")
    atomic_save({"x": torch.ones(1)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_save({"x": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(1))
    assert os.listdir(tmp_path) == ["ck.pth"]  # no temporary left behind
