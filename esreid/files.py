"""Writing files safely: the one implementation of atomic writes, the free-space and writability checks, and the
clean-up of temporary files left behind by killed writers.

Atomic writes (:func:`atomic_writer`, :func:`atomic_write`) go to a temporary file
next to the target, are flushed and fsynced, then moved into place with ``os.replace``: the target holds either its
old content or the complete new one, whatever happens (exception, kill, disk full). Temporary files are named::

    .<target name>.<host>.<pid>.<random hex>.esreid-tmp

so that :func:`remove_orphans` can tell a temporary file whose writer was killed (same host, process gone) from one
still being written. It also recognises the temporary files of esreid versions before this module (``.tmp-*.pth`` of
checkpoint saves, ``*.u8.tmp<pid>`` / ``*.json.tmp<pid>`` of the image cache, ``*.yaml|json|jsonl.tmp-<pid>`` of
the trainer's text files).

A full disk, an exceeded quota, a read-only file system or a missing permission while writing becomes a
:class:`StorageError` naming the path and what to do (never a raw ``OSError``); other ``OSError`` s are bugs or
hardware faults and propagate unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from typing import Any, BinaryIO, Dict, Iterator, List, Union

from esreid.errors import EsreidError

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".esreid-tmp"
ORPHAN_AGE = 24 * 3600  # seconds: a temporary file this old is an orphan whoever wrote it (e.g. another host)

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}  # posix_fallocate on some file systems
_ZEROS = bytes(1 << 20)

_OURS = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+" + re.escape(TMP_SUFFIX) + "$")
_LEGACY = (
    re.compile(r"^\.tmp-[a-z0-9_]{8}\.pth$"),  # checkpoint.atomic_save (tempfile.mkstemp: no pid)
    re.compile(r"^.+\.(?:u8|json)\.tmp(?P<pid>\d+)$"),  # data.cache array and index
    re.compile(r"^.+\.(?:yaml|json|jsonl)\.tmp-(?P<pid>\d+)$"),  # trainer's config.yaml, metrics.jsonl, results.json
)


class StorageError(EsreidError):
    """A file or folder cannot be written: disk full, quota, read-only file system, permissions. The message names
    the path and what to do."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temp_path(path: str) -> str:
    """A new temporary name next to ``path`` (module docstring) that :func:`remove_orphans` recognises."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name[:100]}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def format_size(nbytes: int) -> str:
    """``nbytes`` for people, exact too: ``"512 bytes"``, ``"1.5 MB (1500000 bytes)"`` (powers of 1000)."""
    if nbytes < 1000:
        return f"{nbytes} bytes"
    scaled = float(nbytes)
    for unit in ("kB", "MB", "GB", "TB"):
        scaled /= 1000
        if scaled < 1000 or unit == "TB":
            break
    return f"{scaled:.1f} {unit} ({nbytes} bytes)"


@contextlib.contextmanager
def reported(path: str) -> Iterator[None]:
    """Turn an ``OSError`` of a full disk or an unwritable folder raised while writing ``path`` into a
    :class:`StorageError` naming it; any other exception passes unchanged."""
    try:
        yield
    except OSError as e:
        folder = os.path.dirname(os.path.abspath(path))
        if e.errno in _DISK_FULL:
            raise StorageError(f"cannot write {path}: {e.strerror}; free space on that disk or choose a folder on "
                               "another disk (files already there were left intact)") from e
        if e.errno in _NOT_WRITABLE:
            raise StorageError(f"cannot write {path}: {e.strerror}; make {folder} writable or choose another "
                               "folder") from e
        raise


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[BinaryIO]:
    """A binary file open on a temporary name next to ``path``; when the block ends normally it is flushed, fsynced
    and moved onto ``path``, otherwise removed. ``path`` is never half-written; disk errors raise
    :class:`StorageError`."""
    folder = os.path.dirname(os.path.abspath(path))
    with reported(path):
        os.makedirs(folder, exist_ok=True)
        tmp = temp_path(path)
        try:
            with open(tmp, "xb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make the rename durable (best effort: not every platform can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Union[str, os.PathLike], data: Union[bytes, str]) -> str:
    """Replace ``path`` by ``data`` (bytes, or text as UTF-8) atomically (:func:`atomic_writer`: a reader never sees
    a half-written file, an interrupted write leaves the old one). Returns ``path`` as a string."""
    path = os.fspath(path)
    with atomic_writer(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """The records (JSON objects) of a JSON-lines file such as ``metrics.jsonl``, in file order: none when it does not
    exist; a line cut short by a crash (not JSON, or not an object) is skipped."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def append_text(path: str, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path`` (a log such as metrics.jsonl); disk errors raise :class:`StorageError`."""
    with reported(path), open(path, "ab") as f:
        f.write(text.encode("utf-8"))


def allocate_file(path: str, nbytes: int) -> None:
    """Create ``path`` holding ``nbytes`` zero bytes whose disk blocks are reserved now, so that writing it later
    through a memory map cannot run out of space (which would kill the process with SIGBUS, not raise).

    ``os.posix_fallocate``; where the platform or file system does not support it, zeros are written in 1 MiB chunks.
    Raises :class:`StorageError` when the disk is full (the partial file is removed).
    """
    with reported(path):
        try:
            with open(path, "wb") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, nbytes)
                    return
                except AttributeError:  # not on this platform (e.g. macOS)
                    pass
                except OSError as e:
                    if e.errno not in _UNSUPPORTED:
                        raise
                for start in range(0, nbytes, len(_ZEROS)):
                    f.write(_ZEROS[: min(len(_ZEROS), nbytes - start)])
                f.flush()
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            raise


def check_writable(folder: str, what: str = "folder") -> None:
    """Create ``folder`` if needed and prove it writable (create and remove a temporary file in it).

    Args:
        folder: the folder.
        what: how the user knows it, e.g. ``"output_dir"``; starts the message.

    Raises:
        StorageError: it is a file, or cannot be created, or cannot be written (read-only, permissions, full).
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise StorageError(f"{what} {folder} is a file, not a folder; choose another path")
    try:
        os.makedirs(folder, exist_ok=True)
        probe = temp_path(os.path.join(folder, "write-test"))
        with open(probe, "xb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise StorageError(f"{what} {folder} is not writable ({e.strerror}); choose another folder or make it "
                           "writable") from e


def ensure_free_space(folder: str, nbytes: int, what: str) -> None:
    """Raise :class:`StorageError` unless the disk holding ``folder`` (or its nearest existing parent) has at least
    ``nbytes`` free for this user; ``what`` names what is about to be written, e.g. ``"checkpoint last.pth"``."""
    existing = os.path.abspath(folder)
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if free < nbytes:
        raise StorageError(
            f"not enough free space in {folder} for {what}: needs {format_size(nbytes)}, {format_size(free)} free; "
            "free some space on that disk or choose a folder on another disk"
        )


def remove_orphans(folder: str, max_age: float = ORPHAN_AGE) -> List[str]:
    """Delete the temporary files that killed writers left in ``folder`` (not in subfolders); returns their paths.

    A temporary file (module docstring) is removed when the process that wrote it is gone (same host, pid not
    running) or when it was last modified more than ``max_age`` seconds ago (its writer may run on another host
    sharing the folder, or left no pid). Nothing else is touched: not other files, links or folders. A file that
    cannot be removed (read-only folder) is logged and skipped.
    """
    if not os.path.isdir(folder):
        return []
    host, now, removed = _host(), time.time(), []
    for name in sorted(os.listdir(folder)):
        match = _OURS.match(name) or next((m for m in (p.match(name) for p in _LEGACY) if m), None)
        if match is None:
            continue
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:  # removed meanwhile by another process
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        fields = match.groupdict()
        local = fields.get("host", host) == host
        dead = fields.get("pid") is not None and local and not _running(int(fields["pid"]))
        if dead or now - st.st_mtime > max_age:
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                logger.warning("could not remove the temporary file %s left by a killed writer: %s", path, e.strerror)
                continue
            removed.append(path)
    return removed


def folder_sibling(root: str, kind: str) -> str:
    """``<parent>/.<name>.<kind>-<host>-<pid>``: a folder of this process beside the folder ``root`` (``kind``: e.g.
    ``partial`` for a folder being built, ``old`` for the one it replaces), which :func:`remove_stale_siblings`
    removes once this process is gone."""
    parent, base = os.path.split(root)
    return os.path.join(parent, f".{base}.{kind}-{_host()}-{os.getpid()}")


def remove_stale_siblings(root: str) -> None:
    """Delete the :func:`folder_sibling` folders beside ``root`` left by processes of this host that are gone
    (killed), or by this process (an earlier call that failed). A live process's folders are left alone."""
    parent, base = os.path.split(root)
    pattern = re.compile(rf"\.{re.escape(base)}\.[a-z]+-(.+)-(\d+)")
    for entry in os.listdir(parent):
        m = pattern.fullmatch(entry)
        if m and m.group(1) == _host() and (int(m.group(2)) == os.getpid() or not _running(int(m.group(2)))):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def move_folder_into_place(partial: str, root: str) -> None:
    """Rename the finished folder ``partial`` to ``root``: a folder is only ever seen complete. A non-empty ``root``
    (the previous version) is first moved aside in one step (to its ``old`` sibling) and deleted afterwards."""
    if os.path.isdir(root) and os.listdir(root):
        old = folder_sibling(root, "old")
        os.rename(root, old)
        os.rename(partial, root)
        shutil.rmtree(old)
        return
    os.rename(partial, root)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (assumed so where it cannot be checked)."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists but belongs to another user
        return True
    return True
