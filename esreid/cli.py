"""Command-line interface: ``esreid COMMAND ...``; ``esreid --help`` lists the commands.

This module assembles the parser from the command modules (:mod:`esreid.commands`: one module per command, each with
``add_parser(sub)`` and ``run(args)``), parses, and applies the error policy; it holds no command.

Error policy (:func:`main`): a mistake the user can fix (any :class:`~esreid.errors.EsreidError`, a command line
argparse rejects, a file that is missing, exists already or cannot be accessed) prints one line
``esreid: error: <what, where, how to fix>`` on stderr and exits 2; any other exception is a bug: one line
``esreid: internal error: <type>: <message> ...``, exit 1.
``--debug`` (anywhere on the line) prints the traceback first. Ctrl-C prints ``esreid: interrupted`` (and the
exception's ``hint``, e.g. how to resume) and exits 130.

Parsing: ``key=value`` tokens are config overrides wherever they stand (options and overrides in any order; after an
option taking a list, such as ``ablate --seeds 0 1``, put them before the option or end its list with another one).
Building the parser imports nothing heavy (no torch, numpy, models): ``--help`` answers at once and each command's
``run`` imports what it needs.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import List, Optional, Sequence, Tuple

from esreid import __version__
from esreid.commands import modules
from esreid.commands._args import CONFIG, OVERRIDE, Parser, UsageError
from esreid.errors import EsreidError

__all__ = ["Parser", "UsageError", "build_parser", "main", "parse_args"]

USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def build_parser() -> Parser:
    """The ``esreid`` parser; ``parser.commands`` (and ``parser.commands['datasets'].commands``) hold the commands."""
    p = Parser(prog="esreid", description="ES-Net and erasing methods for person and vehicle re-identification.",
               epilog="examples:\n  esreid demo --quick\n"
                      f"  esreid train --config {CONFIG} data.root=/data/reid\n"
                      "  esreid models\n\n"
                      "Run 'esreid COMMAND --help' for the options of a command.")
    p.add_argument("--version", action="version", version=f"esreid {__version__}")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error (also after COMMAND)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in modules():
        module.add_parser(sub)
    p.commands.update(sub.choices)
    return p


def _find_command(parser: Parser, tokens: List[str]) -> Tuple[Parser, List[str]]:
    """The parser of the (sub)command the leading tokens name, and the tokens after its name."""
    while parser.commands and tokens and tokens[0] in parser.commands:
        parser, tokens = parser.commands[tokens[0]], tokens[1:]
    return parser, tokens


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``esreid`` arguments (without the program name); ``--debug`` may stand anywhere.

    The namespace has ``handler`` (the command's function) and ``overrides`` (for commands that take them).
    Raises :class:`UsageError`; ``--help`` / ``--version`` exit 0.
    """
    tokens = [t for t in argv if t != "--debug"]
    top = build_parser()
    parser, rest = _find_command(top, tokens)
    if parser.commands:  # no (valid) command named: --help, --version, or a usage error
        parser.parse_args(rest)
        parser.error("expected a command")
    args = parser.parse_intermixed_args(rest)  # options and KEY=VALUE positionals in any order
    _reclaim_overrides(args, rest)
    overrides = getattr(args, "overrides", [])
    bad = [t for t in overrides if not OVERRIDE.match(t)]
    if bad:
        parser.error(f"unexpected argument {bad[0]!r} (config overrides look like section.key=value)")
    return args


def _reclaim_overrides(args: argparse.Namespace, tokens: List[str]) -> None:
    """``--allow-changes KEY...`` also swallows the ``KEY=VALUE`` overrides that follow it: give them back to
    ``overrides``, in command-line order (a later override wins)."""
    keys = getattr(args, "allow_changes", None)
    if not keys:
        return
    taken = [k for k in keys if OVERRIDE.match(k)]
    args.allow_changes = [k for k in keys if not OVERRIDE.match(k)]
    order = {token: i for i, token in reversed(list(enumerate(tokens)))}
    args.overrides = sorted(args.overrides + taken, key=lambda t: order.get(t, len(tokens)))


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _user_message(e: BaseException) -> Optional[str]:
    """The one-line message of a user-fixable error, None for a bug."""
    if isinstance(e, EsreidError):
        return _one_line(e)
    if isinstance(e, USER_OS_ERRORS):
        return _one_line(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else e)
    return None


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``esreid ARGS``; returns the exit status (0 ok, 2 user error, 1 internal error, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args = parse_args(argv)
        return int(args.handler(args) or 0)
    except KeyboardInterrupt as e:
        if debug:
            traceback.print_exc()
        hint = getattr(e, "hint", None) or getattr(e.__cause__, "hint", None)
        print("esreid: interrupted" + (f"\nesreid: {hint}" if hint else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `esreid search ... | head`: the reader has gone, nothing is wrong
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes stdout at exit
        return 0
    except Exception as e:  # noqa: BLE001 - the one place that turns exceptions into exit codes
        if debug:
            traceback.print_exc()
        message = _user_message(e)
        if message is not None:
            print(f"esreid: error: {message}", file=sys.stderr)
            return 2
        hint = "please report it" if debug else "rerun with --debug for the traceback; please report it"
        print(f"esreid: internal error: {type(e).__name__}: {_one_line(e)} ({hint})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
