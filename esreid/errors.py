"""User-facing errors.

Every mistake a user can fix (a config value, a dataset layout, a checkpoint, a file or folder) raises a subclass of
:class:`EsreidError` whose message says what is wrong, where, and how to fix it. The command line prints it as one
line ``esreid: error: <message>`` and exits with status 2; any other exception is an internal bug (exit 1).

They live here, below every package, so that any layer can raise them without importing a higher one.
"""

from __future__ import annotations

import re


class EsreidError(Exception):
    """A mistake the user can fix; the message names what, where and how to fix it."""


class ConfigError(EsreidError, ValueError):
    """A config file or override is wrong; the message names the key and where it came from."""


class DatasetError(EsreidError, ValueError):
    """A dataset could not be read; the message names the path, what was expected and where it looked."""


class CheckpointError(EsreidError, ValueError):
    """A checkpoint (or ImageNet weights file) could not be read or does not fit the model; the message names the
    file and the offending keys."""


def unreadable_torch_file(path: str, error: Exception, what: str = "checkpoint") -> CheckpointError:
    """The one-line error for ``torch.load(path, weights_only=True)`` raising ``error``. A file that holds Python
    objects a weights-only load refuses (a pickled class or function: possibly code that would run) is named as such,
    without torch's advice to retry with ``weights_only=False``, which is the unsafe step; any other failure keeps the
    first line of torch's message."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if type(error).__name__ == "UnpicklingError" and text.startswith("Weights only load failed"):
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            return CheckpointError(f"{path}: holds Python objects ({found.group(1)}) that a weights-only load refuses "
                                   "to create: esreid reads tensors and plain values only and never runs code from a "
                                   f"file; use a {what} written by esreid, or have whoever made it save plain tensors "
                                   "(a state dict)")
        reason = re.search(r"(Unsupported[^\n]*|Trying to load[^\n]*)", text)  # not the advice around it
        lines = [reason.group(1).strip() if reason else "refused by the weights-only unpickler"]
    return CheckpointError(f"{path}: not a readable {what} ({type(error).__name__}: {lines[0] if lines else ''})")
