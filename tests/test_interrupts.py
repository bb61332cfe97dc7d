"""Real processes stopped at precise points: Ctrl-C (SIGINT) prints how to continue and exits 130; SIGKILL while a
periodic checkpoint is written, during the last evaluation, or while results.json is written loses nothing: the
resumed run ends with every file of the uninterrupted run and the bit-identical state."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from esreid.cli import main
from esreid.config import dump_yaml
from esreid.engine.checkpoint import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}

# Test-only hook, run as the training process: the real CLI, SIGKILLed at the point named by $KILL_AT:
#   write:NAME[:K]  after the first bytes of the K-th (default: first) atomic write of NAME (a checkpoint or
#                   results.json)
#   eval:N          during the evaluation of epoch N
KILLER = """
import contextlib, os, signal, sys
import esreid.engine.checkpoint as checkpoint
import esreid.files as files
from esreid.cli import main
from esreid.engine.trainer import Trainer

kind, _, where = os.environ["KILL_AT"].partition(":")
where, _, nth = where.partition(":")
writes = []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class Dying:
    def __init__(self, f):
        self.f = f
    def write(self, data):
        self.f.write(data)
        self.f.flush()
        die()

if kind == "write":
    real = files.atomic_writer
    @contextlib.contextmanager
    def writer(path):
        writes.append(os.path.basename(path))
        with real(path) as f:
            yield Dying(f) if writes.count(where) == int(nth or 1) and writes[-1] == where else f
    files.atomic_writer = checkpoint.atomic_writer = writer
else:
    evaluate = Trainer.evaluate
    def dying_evaluate(self):
        if self.state.epoch + 1 == int(where):
            die()
        return evaluate(self)
    Trainer.evaluate = dying_evaluate
sys.exit(main(sys.argv[1:]))
"""


def write_config(tmp_path, tiny_config, epochs, out):
    path = tmp_path / f"{out}.yaml"
    path.write_text(dump_yaml(tiny_config(epochs=epochs, out=out)))
    return str(path)


# kill point -> the file it leaves missing. write:last.pth:2 resumes from epoch 1 with its evaluation recorded (so
# not redone): before, the global torch RNG in the later last.pth differed (the evaluation's loader drew from it)
KILLS = {"write:epoch_002.pth": "epoch_002.pth", "write:last.pth:2": "epoch_002.pth", "eval:3": "results.json",
         "write:results.json": "results.json"}


@pytest.mark.slow
def test_sigkill_loses_nothing(tmp_path, tiny_config, runs):
    """For each kill point: the process dies with the file it was writing (or about to write) missing; resuming
    re-creates it, and every checkpoint, metrics.jsonl and results.json equal the uninterrupted run's."""
    straight = tmp_path / "straight"
    assert main(["train", "--config", write_config(tmp_path, tiny_config, 3, "straight"), "--no-progress"]) == 0
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    for i, (kill_at, lost) in enumerate(KILLS.items()):
        config = write_config(tmp_path, tiny_config, 3, f"run{i}")
        proc = subprocess.run([sys.executable, str(killer), "train", "--config", config, "--no-progress"],
                              env={**ENV, "KILL_AT": kill_at}, capture_output=True, text=True, timeout=600)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        run = tmp_path / f"run{i}"
        assert not (run / lost).exists(), kill_at
        assert main(["train", "--config", config, "--resume", "auto", "--no-progress"]) == 0
        assert sorted(os.listdir(run)) == sorted(os.listdir(straight)), kill_at  # the temporary file is gone too
        for name in [n for n in sorted(os.listdir(run)) if n.endswith(".pth")]:
            runs.assert_same(load_checkpoint(str(straight / name)), load_checkpoint(str(run / name)),
                             f"{kill_at} {name}")
        assert runs.records(run) == runs.records(straight), kill_at
        results = [json.loads((r / "results.json").read_text()) for r in (run, straight)]
        assert [{k: v for k, v in r.items() if k != "eval_seconds"} for r in results] == 2 * [
            {k: v for k, v in results[1].items() if k != "eval_seconds"}], kill_at


@pytest.mark.slow
def test_a_kill_while_model_best_is_written_leaves_no_stale_file(tmp_path, tiny_config, runs):
    """SIGKILL during the last write of model_best.pth (its evaluation already in metrics.jsonl, the file still the
    previous best or none): resuming re-creates it from that epoch's checkpoint, and every file equals the
    uninterrupted run's. Before: model_best.pth kept the previous best's epoch (or stayed missing)."""
    straight = tmp_path / "straight"
    assert main(["train", "--config", write_config(tmp_path, tiny_config, 3, "straight"), "--no-progress"]) == 0
    maps = [r["mAP"] for r in runs.records(straight) if r["type"] == "eval"]
    writes = sum(value > max(maps[:i], default=-1.0) for i, value in enumerate(maps))  # improvements
    best = maps.index(max(maps)) + 1
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    config = write_config(tmp_path, tiny_config, 3, "run")
    proc = subprocess.run([sys.executable, str(killer), "train", "--config", config, "--no-progress"],
                          env={**ENV, "KILL_AT": f"write:model_best.pth:{writes}"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run = tmp_path / "run"
    assert not (run / "model_best.pth").exists() or load_checkpoint(str(run / "model_best.pth"))["epoch"] < best
    assert main(["train", "--config", config, "--resume", "auto", "--no-progress"]) == 0
    assert sorted(os.listdir(run)) == sorted(os.listdir(straight))
    for name in [n for n in sorted(os.listdir(run)) if n.endswith(".pth")]:
        runs.assert_same(load_checkpoint(str(straight / name)), load_checkpoint(str(run / name)), name)
    assert runs.records(run) == runs.records(straight)
    assert f"re-created {run / 'model_best.pth'} (epoch {best}, mAP " in (run / "log.txt").read_text()


@pytest.mark.slow
def test_ctrl_c_prints_how_to_continue(tmp_path, tiny_config):
    config = write_config(tmp_path, tiny_config, 40, "run")
    last = tmp_path / "run" / "last.pth"
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        # SIGINT as a terminal delivers it, even where this test runs with SIGINT ignored (a background job of a
        # non-interactive shell): Python keeps an inherited SIG_IGN, so reset it in the child before it starts
        proc = subprocess.Popen([sys.executable, "-m", "esreid.cli", "train", "--config", config, "--no-progress"],
                                env=ENV, stdout=out, stderr=err,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 300
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    lines = (tmp_path / "err.txt").read_text().splitlines()
    assert lines[-2] == "esreid: interrupted"
    prefix, _, command = lines[-1].partition("; continue with: ")
    epoch, iteration = map(int, prefix.removeprefix("esreid: interrupted at epoch ").split(", iteration "))
    assert command == f"esreid train --config {config} --no-progress --resume auto"
    state = load_checkpoint(str(last))
    assert epoch in (state["epoch"], state["epoch"] + 1) and iteration >= 11 * (epoch - 1)
    # the printed command continues the run (here for one more epoch)
    assert main(shlex.split(command)[1:] + [f"solver.epochs={state['epoch'] + 1}"]) == 0
    assert load_checkpoint(str(last))["epoch"] == state["epoch"] + 1
