"""The commands of ``esreid``: one module per command, found here (:func:`modules`) and assembled by
:func:`esreid.cli.build_parser`.

A command module has ``ORDER`` (its place in ``esreid --help``), ``add_parser(sub)`` (adds its subcommand(s) to the
argparse action ``sub``, each with ``handler`` set to the function that runs it) and ``run(args)``. Adding a command
is adding a module here: nothing else lists them. A module imports only :mod:`esreid.commands._args` at its top
level (``esreid --help`` stays instant); ``run`` imports the library it calls, which takes plain arguments and never
an ``argparse.Namespace``. Modules whose name starts with ``_`` are not commands.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import List


def modules() -> List[ModuleType]:
    """Every command module of this package, in ``ORDER``."""
    found = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)
             if not m.name.startswith("_")]
    return sorted(found, key=lambda m: m.ORDER)
