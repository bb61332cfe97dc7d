"""Safe file writing: atomic replacement, disk-full / read-only errors, free-space and writability checks, orphans."""

import errno
import os
import time

import pytest

import esreid.files as files
from esreid.files import StorageError


def test_atomic_write_replaces_or_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "results.json")
    files.atomic_write(path, "old ✓")
    files.atomic_write(path, "new ✓")
    assert (tmp_path / "results.json").read_text(encoding="utf-8") == "new ✓"
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_writer(path) as f:
            f.write(b"half of the new conte")
            raise KeyboardInterrupt
    assert (tmp_path / "results.json").read_text(encoding="utf-8") == "new ✓"
    assert os.listdir(tmp_path) == ["results.json"]
    files.atomic_write(str(tmp_path / "sub" / "b.bin"), b"\x00\x01")  # creates the folder
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"


def test_temp_files_sit_next_to_the_target_and_are_recognised(tmp_path):
    tmp = files.temp_path(str(tmp_path / "last.pth"))
    assert os.path.dirname(tmp) == str(tmp_path) and tmp != files.temp_path(str(tmp_path / "last.pth"))
    assert os.path.basename(tmp).startswith(".last.pth.") and tmp.endswith(files.TMP_SUFFIX)
    with open(tmp, "wb"):
        pass
    assert files.remove_orphans(str(tmp_path)) == []  # its writer (this process) is alive
    assert files.remove_orphans(str(tmp_path), max_age=-1) == [tmp]


def test_disk_full_while_writing_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch, storage):
    path = str(tmp_path / "config.yaml")
    files.atomic_write(path, "old")
    storage.simulate_full_disk(monkeypatch, 10)
    with pytest.raises(StorageError, match=f"cannot write {path}: No space left on device; free space"):
        files.atomic_write(path, "a longer new text")
    assert (tmp_path / "config.yaml").read_text() == "old" and os.listdir(tmp_path) == ["config.yaml"]
    with pytest.raises(StorageError, match="metrics.jsonl: No space left"):
        files.append_text(str(tmp_path / "metrics.jsonl"), "x" * 20)


def test_fsync_error_is_reported(tmp_path, monkeypatch):
    """Network file systems report a full disk at fsync/close, after every write succeeded."""
    path = str(tmp_path / "a.txt")
    files.atomic_write(path, "old")

    def fsync(fd):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(StorageError, match="a.txt: Disk quota exceeded"):
        files.atomic_write(path, "new")
    assert (tmp_path / "a.txt").read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_read_only_folder(tmp_path, monkeypatch, storage):
    storage.simulate_read_only(monkeypatch)
    path = str(tmp_path / "results.json")
    with pytest.raises(StorageError, match=f"cannot write {path}: Read-only file system; make {tmp_path} writable"):
        files.atomic_write(path, "x")
    with pytest.raises(StorageError, match=f"output_dir {tmp_path} is not writable \\(Read-only file system\\)"):
        files.check_writable(str(tmp_path), "output_dir")
    with pytest.raises(StorageError, match="Read-only"):
        files.append_text(path, "x")
    assert os.listdir(tmp_path) == []


def test_read_only_folder_by_chmod(tmp_path, storage):
    folder = tmp_path / "ro"
    folder.mkdir()
    storage.make_read_only(folder)
    try:
        with pytest.raises(StorageError, match=f"output_dir {folder} is not writable \\(Permission denied\\)"):
            files.check_writable(str(folder), "output_dir")
        with pytest.raises(StorageError, match="Permission denied; make"):
            files.atomic_write(str(folder / "a.txt"), "x")
    finally:
        os.chmod(folder, 0o755)


def test_check_writable_creates_the_folder_and_rejects_files(tmp_path):
    files.check_writable(str(tmp_path / "a" / "b"))
    assert os.listdir(tmp_path / "a" / "b") == []  # the probe is gone
    (tmp_path / "f").write_text("")
    with pytest.raises(StorageError, match=f"output_dir {tmp_path / 'f'} is a file, not a folder"):
        files.check_writable(str(tmp_path / "f"), "output_dir")
    with pytest.raises(StorageError, match="not writable"):  # a parent that is a file
        files.check_writable(str(tmp_path / "f" / "sub"), "output_dir")


def test_ensure_free_space_compares_with_the_free_bytes(tmp_path, monkeypatch):
    usage = type(files.shutil.disk_usage(tmp_path))(total=10**12, used=10**12 - 1500, free=1500)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: usage)
    files.ensure_free_space(str(tmp_path), 1500, "x")
    folder = str(tmp_path / "not" / "yet")  # measured on the nearest existing parent
    with pytest.raises(StorageError, match=f"not enough free space in {folder} for checkpoint last.pth: needs "
                                           r"2.5 MB \(2500000 bytes\), 1.5 kB \(1500 bytes\) free; free some space"):
        files.ensure_free_space(folder, 2_500_000, "checkpoint last.pth")


def test_format_size():
    assert [files.format_size(n) for n in (0, 999, 1000, 1_250_000, 3 * 10**9, 7 * 10**15)] == [
        "0 bytes", "999 bytes", "1.0 kB (1000 bytes)", "1.2 MB (1250000 bytes)", "3.0 GB (3000000000 bytes)",
        "7000.0 TB (7000000000000000 bytes)"]


def test_remove_orphans_removes_only_dead_or_old_temporaries(tmp_path, storage):
    dead, alive, host = storage.dead_pid(), os.getppid(), files._host()
    old = time.time() - files.ORPHAN_AGE - 60
    names = {
        # (name, mtime) -> removed?
        (f".last.pth.{host}.{dead}.0a1b2c3d.esreid-tmp", None): True,
        (f".last.pth.{host}.{alive}.0a1b2c3d.esreid-tmp", None): False,
        (f".last.pth.{host}.{alive}.0a1b2c3e.esreid-tmp", old): True,
        (f".k.u8.other-host.{dead}.0a1b2c3d.esreid-tmp", None): False,  # its writer may run on that host
        (f".k.u8.other-host.{dead}.0a1b2c3e.esreid-tmp", old): True,
        (".tmp-ab_cd9x1.pth", None): False,  # no pid: age only
        (".tmp-ab_cd9x2.pth", old): True,
        (f"0123abcd.u8.tmp{dead}", None): True,
        (f"0123abcd.json.tmp{dead}", None): True,
        (f"0123abcd.json.tmp{alive}", None): False,
        (f"config.yaml.tmp-{dead}", None): True,
        (f"metrics.jsonl.tmp-{dead}", None): True,
        ("last.pth", old): False,
        ("0123abcd.u8", old): False,
        (f"notes.txt.tmp-{dead}", old): False,
        (f"images.tar.tmp{dead}", old): False,
        (".tmp-notes.txt", old): False,
        (f".last.pth.{host}.{dead}.0a1b2c3d.esreid-tmp.bak", old): False,
    }
    for name, mtime in names:
        (tmp_path / name).write_bytes(b"x")
        if mtime is not None:
            os.utime(tmp_path / name, (mtime, mtime))
    folder = tmp_path / f".d.{host}.{dead}.00.esreid-tmp"  # a folder or a link with such a name is not ours
    folder.mkdir()
    (tmp_path / f".l.{host}.{dead}.00.esreid-tmp").symlink_to(tmp_path / "last.pth")

    removed = files.remove_orphans(str(tmp_path))
    assert sorted(removed) == sorted(str(tmp_path / name) for (name, _), gone in names.items() if gone)
    kept = {name for (name, _), gone in names.items() if not gone} | {folder.name, f".l.{host}.{dead}.00.esreid-tmp"}
    assert set(os.listdir(tmp_path)) == kept
    assert files.remove_orphans(str(tmp_path / "missing")) == []


def test_allocate_file_reserves_the_blocks(tmp_path, monkeypatch):
    """A sparse file (``truncate``, ``np.memmap(mode='w+')``) has no blocks: memory-mapped writes to it on a full
    disk die of SIGBUS. Both ways of allocating must reserve every block."""
    n = 3 * (1 << 20) + 5

    def check(path):
        st = os.stat(path)
        assert st.st_size == n and st.st_blocks * 512 >= n
        with open(path, "rb") as f:
            assert f.read() == bytes(n)

    files.allocate_file(str(tmp_path / "a"), n)
    check(tmp_path / "a")

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(files.os, "posix_fallocate", unsupported)
    files.allocate_file(str(tmp_path / "b"), n)
    check(tmp_path / "b")
    monkeypatch.delattr(files.os, "posix_fallocate")  # e.g. macOS
    files.allocate_file(str(tmp_path / "c"), n)
    check(tmp_path / "c")


def test_allocate_file_on_a_full_disk(tmp_path, monkeypatch, storage):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "posix_fallocate", full)
    with pytest.raises(StorageError, match="a.u8: No space left on device"):
        files.allocate_file(str(tmp_path / "a.u8"), 1000)
    monkeypatch.delattr(files.os, "posix_fallocate")
    storage.simulate_full_disk(monkeypatch, 100)  # the fallback's zeros fill the disk
    with pytest.raises(StorageError, match="b.u8: No space left on device"):
        files.allocate_file(str(tmp_path / "b.u8"), 1000)
    assert os.listdir(tmp_path) == []
