"""``python -m esreid.launch [torchrun options] COMMAND ...``: torchrun (DDP on several processes) with esreid's exit
statuses.

``torchrun ... -m esreid.cli train ...`` works, but torchrun answers Ctrl-C with its own traceback and exit status 1,
and a worker's one-line mistake (exit 2) with exit status 1 too. This launcher runs torchrun's own launcher
(:mod:`torch.distributed.run`, the same options) on ``python -m esreid.cli COMMAND ...`` and exits as one esreid
process would: 130 after Ctrl-C (each worker prints where it stopped and the command that continues the run), the
status of the first worker that failed otherwise (2 for a mistake, which that worker printed on its one line), 0 when
all succeed. Either way the workers end with their launcher, even a SIGKILLed one
(:func:`esreid.engine.distributed.die_with_parent`).

Example::

    python -m esreid.launch --nproc_per_node=4 train --config configs/market1501/esnet.yaml data.root=/data/reid
"""

from __future__ import annotations

import sys
from typing import List, Optional, Sequence, Tuple

USAGE = "python -m esreid.launch [torchrun options] COMMAND ... (e.g. --nproc_per_node=4 train --config C.yaml)"


def split(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(torchrun options, the esreid command line from its command name on)."""
    from esreid.cli import build_parser

    commands = build_parser().commands
    at = next((i for i, token in enumerate(argv) if token in commands), len(argv))
    return list(argv[:at]), list(argv[at:])


def main(argv: Optional[Sequence[str]] = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    options, command = split(sys.argv[1:] if argv is None else argv)
    if not command:
        print(f"esreid: error: no esreid command after the torchrun options; usage: {USAGE}", file=sys.stderr)
        return 2
    args = parse_args([*options, "-m", "esreid.cli", *command])
    try:
        run(args)
    except SignalException as e:  # Ctrl-C (or a kill) of the launcher: the workers were stopped with that signal
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code  # a worker killed by signal N: 128 + N, as a shell reports it
    return 0


if __name__ == "__main__":
    sys.exit(main())
