"""One training process per run folder: the lock ``esreid train`` (and each ``esreid ablate`` cell) holds on
``<output_dir>/.esreid.lock`` for the whole run.

Two runs writing one folder interleave ``metrics.jsonl``, overwrite each other's checkpoints and leave results of
neither; a second ``esreid train`` into a folder being trained, or ``--resume auto`` while the first still trains, is
therefore refused before it does anything, naming the process that holds the folder (:class:`RunLocked`). Commands
that only read a run (``eval``, ``extract``, ``explain`` ...) take no lock and may read a running one.

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the lock file: the kernel drops it when the holder exits, however it
exits (Ctrl-C, SIGKILL, the OOM killer), so a lock is never stale; the file itself stays and means nothing without a
holder. After locking, the holder writes ``pid <pid> host <host> since <UTC time>`` into it: what a refused process
names. On a file system without flock support (some network or FUSE mounts) the run goes on unlocked with a warning.
Under DDP only rank 0 (the process that writes) takes the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time
from typing import BinaryIO, Iterator, Optional

from esreid.errors import EsreidError
from esreid.files import check_writable

LOCK_NAME = ".esreid.lock"


class RunLocked(EsreidError):
    """The run folder is held by another training process; the message names its pid, host and start time."""


class RunLock:
    """The exclusive lock of run folder ``folder`` (created if needed); :meth:`acquire` / :meth:`release`, or use it
    as a context manager."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.file: Optional[BinaryIO] = None  # open while held (closed, hence released, when collected too)

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`RunLocked` naming the holder (nothing in the folder is changed then);
        :class:`~esreid.files.StorageError` when the folder cannot be created or written."""
        check_writable(self.folder, "output_dir")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLocked(f"output_dir {self.folder} is in use by another training process ({holder}; lock file "
                            f"{self.path}); wait until it ends or stop it, or choose another output_dir") from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
                raise
            print(f"esreid: warning: cannot lock {self.path} ({e.strerror}): nothing stops a second run from writing "
                  "into this output_dir", file=sys.stderr)
            return self
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        self.file = os.fdopen(fd, "r+b", buffering=0)
        self.file.truncate(0)
        self.file.write(f"pid {os.getpid()} host {socket.gethostname()} since {since}\n".encode())
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a process that has just opened it)."""
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """``pid N on host H, since T`` from the lock file (the holder writes it right after locking: wait a moment for
    it)."""
    for _ in range(20):
        words = os.pread(fd, 512, 0).decode(errors="replace").split()
        if len(words) >= 6 and words[0] == "pid" and words[2] == "host" and words[4] == "since":
            return f"pid {words[1]} on host {words[3]}, since {' '.join(words[5:])}"
        time.sleep(0.05)
    return "pid unknown: the lock file names no holder"


@contextlib.contextmanager
def run_lock(folder: str, rank: int = 0) -> Iterator[None]:
    """Hold the lock of run folder ``folder`` on the process of ``rank`` 0 (the one that writes under DDP)."""
    if rank != 0:
        yield
        return
    with RunLock(folder):
        yield
