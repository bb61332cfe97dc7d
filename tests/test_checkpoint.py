"""Checkpoints: exact round trip, RNG restore, atomic writes, named errors, integrity, disk errors, kills."""

import hashlib
import os
import random
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import esreid.files as files
from esreid.engine.checkpoint import (
    FOOTER_SIZE,
    CheckpointError,
    atomic_save,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    set_rng_state,
    tensor_bytes,
    verify_checkpoint,
)
from esreid.files import StorageError


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


# --- integrity (SHA-256 footer), disk errors, kills -------------------------------------------------------------

def checkpoint_file(tmp_path, name="last.pth"):
    """A full checkpoint whose model weights hold a recognisable pattern; returns (path, raw bytes, pattern)."""
    model = small_model()
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(12.0).reshape(3, 4) + 0.5)
    path = str(tmp_path / name)
    save_checkpoint(path, model=model, epoch=3, config={"name": "run"}, optimizer=torch.optim.SGD(model.parameters()))
    return path, open(path, "rb").read(), (torch.arange(12.0) + 0.5).numpy().tobytes()


def test_checkpoint_ends_with_its_sha256_and_stays_a_plain_torch_file(tmp_path):
    path, raw, _ = checkpoint_file(tmp_path)
    body, footer = raw[:-FOOTER_SIZE], raw[-FOOTER_SIZE:]
    assert footer == b"\n#esreid-sha256:" + hashlib.sha256(body).hexdigest().encode() + b"\n"
    assert verify_checkpoint(path) is True
    assert torch.load(path, weights_only=True)["epoch"] == 3  # other tools read it as usual
    assert "data.pkl" in " ".join(zipfile.ZipFile(path).namelist())


@pytest.mark.parametrize("where", ["first byte", "tensor data", "pickle", "zip end record", "last zip byte",
                                   "footer magic", "footer digest", "last byte"])
def test_a_flipped_byte_anywhere_is_caught(tmp_path, where):
    path, raw, pattern = checkpoint_file(tmp_path)
    epoch = str(tmp_path / "epoch_002.pth")
    atomic_save({"x": torch.ones(1)}, epoch)
    end = len(raw) - FOOTER_SIZE
    offset = {"first byte": 0, "tensor data": raw.index(pattern) + 5, "pickle": raw.index(b"config"),
              "zip end record": end - 10, "last zip byte": end - 1, "footer magic": end + 3,
              "footer digest": end + 20, "last byte": len(raw) - 1}[where]
    flipped = bytearray(raw)
    flipped[offset] ^= 0x01
    open(path, "wb").write(flipped)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt .*; use another checkpoint "
                                              rf"\(epoch_002.pth in {tmp_path}\) or retrain"):
        load_checkpoint(path)
    assert load_checkpoint(epoch)["model"]["x"].item() == 1


def test_truncated_checkpoint_is_caught(tmp_path):
    path, raw, _ = checkpoint_file(tmp_path)
    for size in (len(raw) - 1, len(raw) - FOOTER_SIZE + 1, len(raw) - FOOTER_SIZE - 1, len(raw) // 2):
        open(path, "wb").write(raw[:size])
        with pytest.raises(CheckpointError, match="is corrupt"):
            load_checkpoint(path)


def test_files_without_checksum_still_load(tmp_path):
    model = small_model()
    old = {"format": "esreid-checkpoint-v1", "model": model.state_dict(), "epoch": 2}  # esreid before the footer
    torch.save(old, tmp_path / "old.pth")
    assert verify_checkpoint(str(tmp_path / "old.pth")) is False
    assert load_checkpoint(str(tmp_path / "old.pth"))["epoch"] == 2
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    assert torch.equal(load_checkpoint(str(tmp_path / "bare.pth"))["model"]["0.weight"], model[0].weight)
    torch.save(model.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(str(tmp_path / "legacy.pth"))["model"]["0.weight"], model[0].weight)


class Payload:
    """Not a tensor/container: ``weights_only`` loading must refuse to unpickle it."""


class Malicious:
    """Unpickling it would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("payload, named", [(Payload, "test_checkpoint.Payload"), (Malicious, "posix.system")])
def test_loading_stays_weights_only(tmp_path, payload, named):
    """One line naming the file and the refused object, without torch's "re-run with weights_only=False" advice (the
    unsafe step) that today's message repeats; nothing is executed."""
    path = str(tmp_path / "p.pth")
    atomic_save({"format": "esreid-checkpoint-v1", "x": payload()}, path)
    assert verify_checkpoint(path) is True
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value) == (f"{path}: holds Python objects ({named}) that a weights-only load refuses to create: "
                            "esreid reads tensors and plain values only and never runs code from a file; use a "
                            "checkpoint written by esreid, or have whoever made it save plain tensors (a state dict)")
    assert "weights_only" not in str(e.value) and not os.path.exists(tmp_path / "pwned")


def test_tensor_bytes_counts_shared_storage_once():
    w = torch.zeros(10, 4)  # 160 bytes
    obj = {"a": w, "b": [w[1], (w.t(), torch.zeros(3, dtype=torch.float64))], "c": 7, "d": "text",
           "sparse": torch.eye(3).to_sparse()}  # has no storage to measure: left out, not an error
    assert tensor_bytes(obj) == 160 + 24


def test_not_enough_space_is_refused_before_writing(tmp_path, monkeypatch):
    path, big = str(tmp_path / "last.pth"), str(tmp_path / "big.pth")
    atomic_save({"x": torch.ones(1)}, path)
    atomic_save({"x": torch.zeros(2000)}, big)
    before = open(path, "rb").read()
    usage = type(files.shutil.disk_usage(tmp_path))(total=10**9, used=10**9 - 3999, free=3999)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: usage)
    with pytest.raises(StorageError, match=f"not enough free space in {tmp_path} for checkpoint last.pth: "
                                           r"needs 4.0 kB \(4000 bytes\), 4.0 kB \(3999 bytes\) free"):
        atomic_save({"x": torch.zeros(1000)}, path)  # the tensors' bytes, larger than the previous file
    assert open(path, "rb").read() == before and sorted(os.listdir(tmp_path)) == ["big.pth", "last.pth"]
    with pytest.raises(StorageError, match=f"for checkpoint big.pth: needs .*\\({os.path.getsize(big)} bytes\\)"):
        atomic_save({"x": torch.ones(1)}, big)  # the previous file's size, larger than the tensors' bytes


def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, storage):
    path, raw, _ = checkpoint_file(tmp_path)
    storage.simulate_full_disk(monkeypatch, len(raw) // 2)
    with pytest.raises(StorageError, match=f"cannot write {path}: No space left on device"):
        save_checkpoint(path, model=small_model(), epoch=4, config={}, optimizer=None)
    assert open(path, "rb").read() == raw and os.listdir(tmp_path) == ["last.pth"]
    assert load_checkpoint(path)["epoch"] == 3


def test_ctrl_c_during_save_is_a_ctrl_c_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    # before: torch's zip writer turned the KeyboardInterrupt raised inside write() into "RuntimeError: unexpected
    # pos", and `esreid train` ended as an internal error (exit 1) instead of stopping with its hint (exit 130)
    from esreid.engine import checkpoint

    path, raw, _ = checkpoint_file(tmp_path)
    calls = []

    class Interrupted:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            calls.append(len(data))
            if len(calls) == 3:  # Ctrl-C in the middle of the file
                raise KeyboardInterrupt
            return self.f.write(data)

    real = checkpoint._HashingWriter.__init__
    monkeypatch.setattr(checkpoint._HashingWriter, "__init__", lambda self, f: real(self, Interrupted(f)))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=small_model(), epoch=4, config={}, optimizer=None)
    assert len(calls) == 3 and open(path, "rb").read() == raw and os.listdir(tmp_path) == ["last.pth"]


def test_read_only_folder_during_save(tmp_path, monkeypatch, storage):
    storage.simulate_read_only(monkeypatch)
    with pytest.raises(StorageError, match="last.pth: Read-only file system; make .* writable"):
        atomic_save({"x": torch.ones(1)}, str(tmp_path / "last.pth"))


def test_read_only_folder_by_chmod_during_save(tmp_path, storage):
    atomic_save({"x": torch.ones(1)}, str(tmp_path / "last.pth"))
    storage.make_read_only(tmp_path)
    try:
        with pytest.raises(StorageError, match="last.pth: Permission denied"):
            atomic_save({"x": torch.zeros(1)}, str(tmp_path / "last.pth"))
    finally:
        os.chmod(tmp_path, 0o755)
    assert load_checkpoint(str(tmp_path / "last.pth"))["model"]["x"].item() == 1


KILLED_SAVE = """
import sys, time, torch
from esreid.engine.checkpoint import atomic_save

real_save = torch.save

def slow_save(obj, f):  # stalls half-way through the file, as a slow disk would
    class Stalling:
        written = 0
        def write(self, data):
            n = f.write(data)
            Stalling.written += n
            if Stalling.written > 2_000_000:
                f.flush()
                print("stalled", flush=True)
                time.sleep(600)
            return n
        def flush(self):
            f.flush()
    real_save(obj, Stalling())

torch.save = slow_save
atomic_save({"w": torch.ones(1_000_000)}, sys.argv[1])
"""


def test_kill_during_save_keeps_the_previous_file_and_leaves_an_orphan_to_remove(tmp_path):
    path, raw, _ = checkpoint_file(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, path], stdout=subprocess.PIPE,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert child.stdout.readline() == b"stalled\n"
    finally:
        child.kill()
        child.wait()
    orphans = [n for n in os.listdir(tmp_path) if n != "last.pth"]
    assert len(orphans) == 1 and os.path.getsize(tmp_path / orphans[0]) > 2_000_000
    assert open(path, "rb").read() == raw and load_checkpoint(path)["epoch"] == 3
    assert files.remove_orphans(str(tmp_path)) == [str(tmp_path / orphans[0])]
    assert os.listdir(tmp_path) == ["last.pth"]
