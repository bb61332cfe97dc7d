"""One training process per run folder (esreid.engine.runlock), with real processes: a second ``esreid train`` or a
``--resume auto`` into a folder being trained is refused before it touches anything, naming the holder; commands
that read the run are not; a killed holder leaves no stale lock."""

import os
import signal
import subprocess
import sys
import time

import pytest

from esreid.config import dump_yaml
from esreid.engine.checkpoint import load_checkpoint
from esreid.engine.runlock import LOCK_NAME, RunLock, RunLocked

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}


def esreid(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "esreid.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def snapshot(folder):
    """Every file of ``folder`` with its size and mtime (a refused command must change none)."""
    return {n: (os.stat(os.path.join(folder, n)).st_size, os.stat(os.path.join(folder, n)).st_mtime_ns)
            for n in sorted(os.listdir(folder))}


@pytest.mark.slow
def test_a_second_run_into_a_folder_being_trained_is_refused(tmp_path, tiny_config):
    config = tmp_path / "c.yaml"
    config.write_text(dump_yaml(tiny_config(epochs=100000, extra=["checkpoint.period=0"])))
    run = tmp_path / "run"
    train = ["train", "--config", str(config), "--no-progress"]
    first = subprocess.Popen([sys.executable, "-m", "esreid.cli", *train], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (run / "last.pth").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        words = (run / LOCK_NAME).read_text().split()
        assert words[:2] == ["pid", str(first.pid)] and words[2] == "host" and words[4] == "since"
        holder = f"pid {first.pid} on host {words[3]}, since {' '.join(words[5:])}"
        message = (f"esreid: error: output_dir {run} is in use by another training process ({holder}; lock file "
                   f"{run / LOCK_NAME}); wait until it ends or stop it, or choose another output_dir\n")
        # before: a second train that started before the first's last.pth, and every --resume auto, ran and mixed
        # their metrics.jsonl, checkpoints and results with the first's
        for second in (train, train + ["--resume", "auto"]):
            for name in ("config.yaml", "log.txt", "metrics.jsonl"):
                (run / name).touch()  # unchanged below: the refused command wrote nothing
            os.kill(first.pid, signal.SIGSTOP)  # the first writes nothing while the folder is compared
            try:
                before = snapshot(run)
                proc = esreid(*second)
                assert (proc.returncode, proc.stderr) == (2, message), second
                assert snapshot(run) == before, second
            finally:
                os.kill(first.pid, signal.SIGCONT)
        # reading the running run is fine
        proc = esreid("eval", "--config", str(config), "--weights", str(run / "last.pth"), "--out",
                      str(tmp_path / "eval"))
        assert proc.returncode == 0, proc.stderr
        # a killed holder leaves its lock file, not its lock: resuming goes on (one more epoch)
        first.kill()
        first.wait()
        done = load_checkpoint(str(run / "last.pth"))["epoch"]
        proc = esreid(*train, "--resume", "auto", f"solver.epochs={done + 1}")
        assert proc.returncode == 0, proc.stderr
        assert load_checkpoint(str(run / "last.pth"))["epoch"] == done + 1
    finally:
        first.kill()
        first.wait()


def test_the_lock_is_exclusive_released_and_reusable(tmp_path):
    """In one process too (flock locks belong to the open file): a second RunLock is refused until the first is
    released; the file stays and names the newest holder."""
    with RunLock(str(tmp_path / "run")):
        with pytest.raises(RunLocked, match=rf"\(pid {os.getpid()} on host "):
            RunLock(str(tmp_path / "run")).acquire()
    with RunLock(str(tmp_path / "run")):
        pass
    assert (tmp_path / "run" / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} host ")
