"""User-facing errors.

Every mistake a user can fix (a config value, a dataset layout, a checkpoint, a file or folder) raises a subclass of
:class:`EsreidError` whose message says what is wrong, where, and how to fix it. The command line prints it as one
line ``esreid: error: <message>`` and exits with status 2; any other exception is an internal bug (exit 1).
"""

from __future__ import annotations


class EsreidError(Exception):
    """A mistake the user can fix; the message names what, where and how to fix it."""
