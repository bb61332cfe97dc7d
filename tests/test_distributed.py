"""DDP on CPU (gloo): two processes split the PK batches, stay in sync, and only rank 0 writes; a stopped DDP run
resumes bit for bit (every rank's RNG states are checkpointed)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from esreid.config import dump_yaml
from esreid.engine.checkpoint import load_checkpoint
from esreid.engine.hooks import HookBase
from esreid.engine.trainer import Trainer
from esreid.models import MODELS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str, cfg) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(cfg, progress=False, log=lambda s: None)
    assert len(trainer.train_loader) == len(trainer.train_loader.batch_sampler) and trainer.dist.world_size == world
    trainer.train()
    torch.save(trainer.model.state_dict(), f"{tmp}/rank{rank}.pt")
    gens = {k: g.get_state() for k, g in trainer.generators().items() if k.startswith("model.")}
    torch.save({"model_generators": gens, "augment": trainer.augment.generator.get_state()}, f"{tmp}/rng{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS.names())
def test_two_process_ddp_training(tmp_path, tiny_config, name):
    # generate the data once, before the processes race for it
    from esreid.data.datasets.synthetic import generate_synthetic_market

    generate_synthetic_market(str(tmp_path / "data" / "synthetic"), num_train_ids=16, num_test_ids=8,
                              images_per_id=6, height=64, width=32)
    # 192x64 images give a 12x4 layer4 map, on which every model's default settings are valid (PMM's 3x2 blocks)
    cfg = tiny_config(name, epochs=2, extra=["checkpoint.period=0", "data.height=192", "data.width=64"])
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), cfg), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in a:
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.allclose(a[key], b[key], atol=1e-6), key  # gradients were averaged: same weights
    # model generators (DropBlock region, BESM coins) advance alike on every rank: one region per global step;
    # augmentation differs per rank
    r0, r1 = (torch.load(tmp_path / f"rng{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["model_generators"].keys() == r1["model_generators"].keys()
    for key, state in r0["model_generators"].items():
        assert torch.equal(state, r1["model_generators"][key]), key
    assert not torch.equal(r0["augment"], r1["augment"])
    files = set(os.listdir(tmp_path / "run"))
    assert {"last.pth", "results.json", "metrics.jsonl", "config.yaml"} <= files


# --- resuming under DDP ----------------------------------------------------------------------------------------------
class StopAt(HookBase):
    """Ctrl-C on every rank at the same step (a stopped run; the ranks step in lockstep, so none waits for another)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.state.iter == self.iteration:
            raise KeyboardInterrupt


def _resume_worker(rank, world, port, tmp, cfg, mode):
    """``mode``: "straight" trains the whole run; "stop" stops it in epoch 2; "resume" continues it (--resume auto)."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    hooks = [StopAt(iteration=7)] if mode == "stop" else []  # 5 steps per epoch and rank: in epoch 2
    trainer = Trainer(cfg, resume="auto" if mode == "resume" else None, progress=False, log=lambda s: None,
                      hooks=hooks)
    try:
        trainer.train()
    except KeyboardInterrupt as e:
        with open(f"{tmp}/hint{rank}.txt", "w") as f:
            f.write(e.hint)
    torch.save(trainer.model.state_dict(), f"{tmp}/{mode}_rank{rank}.pt")
    torch.save(trainer.rank_state(), f"{tmp}/{mode}_rng{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_a_stopped_ddp_run_resumes_bit_identically(tmp_path, tiny_config, runs):
    """Two ranks (gloo), ES-Net (BESM coin flips: a model generator): stopped in epoch 2 and resumed, the run ends with
    the uninterrupted run's weights, RNG states of every rank, checkpoints and metrics. Before: only rank 0's RNG
    states were saved and every rank restored them (rank 1 then augmented with rank 0's draws)."""
    from esreid.data.datasets.synthetic import generate_synthetic_market

    generate_synthetic_market(str(tmp_path / "data" / "synthetic"), num_train_ids=16, num_test_ids=8,
                              images_per_id=6, height=64, width=32)
    config = {out: tiny_config("esnet", epochs=3, out=out, extra=["checkpoint.period=0"]) for out in ("a", "b")}
    mp.spawn(_resume_worker, args=(2, _free_port(), str(tmp_path), config["a"], "straight"), nprocs=2, join=True)
    mp.spawn(_resume_worker, args=(2, _free_port(), str(tmp_path), config["b"], "stop"), nprocs=2, join=True)
    stopped = load_checkpoint(str(tmp_path / "b" / "last.pth"))
    assert stopped["epoch"] == 1 and len(stopped["ranks"]) == 2
    assert not torch.equal(stopped["ranks"][0]["generators"]["augment"], stopped["ranks"][1]["generators"]["augment"])
    for rank in (0, 1):  # every rank's Ctrl-C hint continues the run (rank 1's said "start again" before)
        assert (tmp_path / f"hint{rank}.txt").read_text().endswith(
            f"continue with: esreid train --config {tmp_path / 'b' / 'config.yaml'} --resume auto")
    mp.spawn(_resume_worker, args=(2, _free_port(), str(tmp_path), config["b"], "resume"), nprocs=2, join=True)
    for rank in (0, 1):
        straight = torch.load(tmp_path / f"straight_rank{rank}.pt", weights_only=True)
        resumed = torch.load(tmp_path / f"resume_rank{rank}.pt", weights_only=True)
        assert straight.keys() == resumed.keys()
        for key in straight:
            assert torch.equal(straight[key], resumed[key]), (rank, key)
        runs.assert_same(torch.load(tmp_path / f"straight_rng{rank}.pt", weights_only=False),
                    torch.load(tmp_path / f"resume_rng{rank}.pt", weights_only=False), f"rank {rank}")
    for name in ("last.pth", "model_best.pth"):
        runs.assert_same(load_checkpoint(str(tmp_path / "a" / name)), load_checkpoint(str(tmp_path / "b" / name)), name)
    assert runs.records(tmp_path / "a") == runs.records(tmp_path / "b")


# --- torchrun --------------------------------------------------------------------------------------------------------
def _workers(pid):
    """The esreid processes torchrun ``pid`` started (from /proc: its children)."""
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    return [c for c in children if b"esreid.cli" in open(f"/proc/{c}/cmdline", "rb").read()]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


TWO = ["--standalone", "--nproc_per_node=2"]  # launcher options: two processes on this machine


def launch(tmp_path, tiny_config, launcher):
    """A run of ``python -m <launcher>`` (torchrun or esreid.launch, with their options) training for ever into
    tmp_path/run; returns the process (stdout and stderr in tmp_path/launcher.txt) once the first last.pth is
    written, the esreid command line (from ``train`` on) and the environment."""
    from esreid.data.datasets.synthetic import generate_synthetic_market

    generate_synthetic_market(str(tmp_path / "data" / "synthetic"), num_train_ids=16, num_test_ids=8,
                              images_per_id=6, height=64, width=32)
    config = tmp_path / "c.yaml"
    config.write_text(dump_yaml(tiny_config(epochs=100000, extra=["checkpoint.period=0"])))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    train = ["train", "--config", str(config), "--no-progress"]
    with open(tmp_path / "launcher.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", *launcher, *train], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 300
    while not (tmp_path / "run" / "last.pth").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail((tmp_path / "launcher.txt").read_text())
        time.sleep(0.1)
    return proc, train, env


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux's")
def test_killing_torchrun_ends_its_workers_and_rank_0_holds_the_run_lock(tmp_path, tiny_config):
    """A real ``torchrun --nproc_per_node=2``: while it trains, ``--resume auto`` into its folder is refused naming the
    pid of rank 0 (the lock holder), by a single process and by ``esreid.launch`` (exit 2, not torchrun's 1); SIGKILL
    to torchrun (which it cannot forward) ends both workers. Before: the workers trained on, holding the folder and
    the GPUs."""
    launcher, train, env = launch(tmp_path, tiny_config, ["torch.distributed.run", *TWO, "-m", "esreid.cli"])
    workers = []
    try:
        workers = _workers(launcher.pid)
        assert len(workers) == 2, (tmp_path / "launcher.txt").read_text()
        holder = int((tmp_path / "run" / ".esreid.lock").read_text().split()[1])
        assert holder in workers
        refused = f"esreid: error: output_dir {tmp_path / 'run'} is in use by another training process (pid {holder} "
        second = subprocess.run([sys.executable, "-m", "esreid.cli", *train, "--resume", "auto"], env=env,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and second.stderr.startswith(refused), second.stderr
        second = subprocess.run([sys.executable, "-m", "esreid.launch", *TWO, *train,
                                 "--resume", "auto"], env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and refused in second.stderr, second.stderr
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 60
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, workers))
    finally:
        launcher.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_under_esreid_launch_exits_130_and_every_rank_says_how_to_continue(tmp_path, tiny_config):
    """SIGINT to the launcher (what Ctrl-C in a terminal sends it; its workers run in sessions of their own): exit
    130 and each rank's hint continues the run. Before: torchrun's traceback and exit 1; rank 1's hint said to start
    again, without --resume."""
    launcher, train, _ = launch(tmp_path, tiny_config, ["esreid.launch", *TWO])
    try:
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=120) == 130
    finally:
        launcher.kill()
    hints = [line for line in (tmp_path / "launcher.txt").read_text().splitlines() if "; continue with: " in line]
    assert len(hints) == 2 and all(h.endswith(f"esreid train --config {train[2]} --no-progress --resume auto")
                                   for h in hints), hints
