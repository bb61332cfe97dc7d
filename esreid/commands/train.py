"""``esreid train``: train a model from a YAML config (resumable, never overwriting a run)."""

from __future__ import annotations

import shlex

from esreid.commands._args import CONFIG, command, existing_file, resume_value

ORDER = 20


def add_parser(sub) -> None:
    p = command(sub, "train", "train a model from a YAML config",
                [f"esreid train --config {CONFIG} data.root=/data/reid solver.amp=bf16",
                 f"esreid train --config {CONFIG} --resume auto solver.epochs=150",
                 f"esreid train --config {CONFIG} --resume auto --allow-changes solver.lr solver.lr=1e-4"],
                "Train a model from a YAML config; checkpoints, config.yaml, metrics.jsonl and results.json go to "
                "output_dir. A run already in output_dir is never overwritten: continue it with --resume auto (a "
                "config that changes the run is refused unless --allow-changes names the changed keys).",
                overrides=True, handler=run)
    p.add_argument("--config", required=True, type=existing_file, help=f"YAML config, e.g. {CONFIG}")
    p.add_argument("--resume", type=resume_value, metavar="auto|CKPT",
                   help="continue a run: 'auto' for <output_dir>/last.pth, or a checkpoint path")
    p.add_argument("--allow-changes", nargs="+", action="extend", default=[], metavar="KEY",
                   help="config keys (or sections) a resumed run may change although the checkpoint was trained with "
                        "other values (e.g. solver.lr); other changes are refused")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from esreid.config import load_config
    from esreid.engine.distributed import launched_rank
    from esreid.engine.hooks import format_cases
    from esreid.engine.runlock import run_lock
    from esreid.engine.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    with run_lock(cfg.output_dir, launched_rank()):  # one training process per output_dir, before anything is written
        trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress, allow_changes=args.allow_changes,
                          command=train_command(args))
        metrics = trainer.train()
        for line in format_cases(metrics, "final"):
            trainer.log(line)
    return 0


def train_command(args) -> str:
    """The ``esreid train`` command line of ``args`` without ``--resume`` (what a hint extends to continue the run)."""
    options = (["--allow-changes", *args.allow_changes] if args.allow_changes else []) + \
        (["--no-progress"] if args.no_progress else [])
    return shlex.join(["esreid", "train", "--config", args.config, *args.overrides, *options])
