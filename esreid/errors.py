"""User-facing errors.

Every mistake a user can fix (a config value, a dataset layout, a checkpoint, a file or folder) raises a subclass of
:class:`EsreidError` whose message says what is wrong, where, and how to fix it. The command line prints it as one
line ``esreid: error: <message>`` and exits with status 2; any other exception is an internal bug (exit 1).

They live here, below every package, so that any layer can raise them without importing a higher one.
"""

from __future__ import annotations


class EsreidError(Exception):
    """A mistake the user can fix; the message names what, where and how to fix it."""


class ConfigError(EsreidError, ValueError):
    """A config file or override is wrong; the message names the key and where it came from."""


class DatasetError(EsreidError, ValueError):
    """A dataset could not be read; the message names the path, what was expected and where it looked."""


class CheckpointError(EsreidError, ValueError):
    """A checkpoint (or ImageNet weights file) could not be read or does not fit the model; the message names the
    file and the offending keys."""
