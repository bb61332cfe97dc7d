"""What every command module shares: the :class:`Parser` (its errors raise :class:`UsageError`), the argument types
(checked while parsing, before any expensive work), and :func:`command`, which adds a subcommand with its examples.

Nothing here imports torch, numpy or any esreid module but :mod:`esreid.errors`: ``esreid --help`` builds every
command's parser and answers at once.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Callable, Dict, Optional, Sequence

from esreid.errors import EsreidError

OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")  # section.key=value (the value is YAML)
OVERRIDE_HELP = "config overrides, anywhere on the line, e.g. solver.lr=1e-4 data.root=/data/reid (values are YAML)"
CONFIG = "configs/market1501/esnet.yaml"

Handler = Callable[[argparse.Namespace], int]


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions to the terminal; keeps indented lines (an epilog's example commands) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(line if line.startswith("  ") else super(HelpFormatter, self)._fill_text(line, width, indent)
                         for line in text.splitlines())


class UsageError(EsreidError):
    """A command line the parser rejects."""


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors raise :class:`UsageError` (one line, exit 2 in :func:`esreid.cli.main`).

    ``commands`` maps the names of its subcommands to their parsers (empty for a leaf command).
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)
        self.commands: Dict[str, Parser] = {}

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --- argument types: checked while parsing, before any expensive work -----------------------------------------------
def existing_file(path: str) -> str:
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{path} is a folder, expected a file" if os.path.isdir(path)
                                         else f"file not found: {path}")
    return path


def existing_dir(path: str) -> str:
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is a file, expected a folder" if os.path.exists(path)
                                         else f"folder not found: {path}")
    return path


def resume_value(value: str) -> str:
    """``auto`` or an existing checkpoint file; an override here is a mistake worth naming."""
    if value == "auto":
        return value
    if OVERRIDE.match(value):
        raise argparse.ArgumentTypeError(f"expected 'auto' or a checkpoint path, got the override {value!r} "
                                         f"(write: --resume auto {value})")
    return existing_file(value)


def list_item(convert: Callable[[str], object], what: str) -> Callable[[str], object]:
    """The type of an option taking a list (``nargs="+"``): such an option swallows the overrides written after it,
    so an override there is named as the mistake instead of being read as a list item."""

    def check(value: str):
        if OVERRIDE.match(value) and not os.path.exists(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got the override {value!r} (write overrides before "
                                             "this option, or end its list with another option)")
        return convert(value)

    return check


def threads_value(value: str) -> str:
    """``auto`` or a positive integer (kept as text: it becomes the override ``threads=<value>``)."""
    return value if value == "auto" else str(positive_int(value))


def seed_value(value: str) -> int:
    if not value.isdigit() or int(value) >= 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed (an integer in [0, 2^32)), got {value!r}")
    return int(value)


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


# --- building a command's parser -------------------------------------------------------------------------------------
def command(sub, name: str, help: str, examples: Sequence[str], description: str = "", overrides: bool = False,
            handler: Optional[Handler] = None) -> Parser:
    """A subcommand with its examples as epilog, ``--debug``, and (``overrides``) ``KEY=VALUE`` positionals."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    p = sub.add_parser(name, help=help, description=description or help, epilog=epilog)
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    if overrides:
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    if handler is not None:
        p.set_defaults(handler=handler)
    return p


def group(sub, name: str, help: str, example: str):
    """A command with subcommands (``esreid NAME SUBCOMMAND``): its parser and the action adding the subcommands."""
    parser = sub.add_parser(name, help=help, description=f"{help[0].upper()}{help[1:]}; run 'esreid {name} "
                                                         "SUBCOMMAND --help'.", epilog=f"examples:\n  {example}")
    return parser, parser.add_subparsers(dest=f"{name}_command", required=True, metavar="SUBCOMMAND")


def trained_model(p: Parser) -> None:
    """``--config`` and ``--weights``: the trained model a command loads."""
    p.add_argument("--config", required=True, type=existing_file, help="the YAML config the model was trained with")
    p.add_argument("--weights", required=True, type=existing_file,
                   help="checkpoint (.pth) written by esreid train, or a state dict")
