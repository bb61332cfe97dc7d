"""``esreid demo``: train and evaluate the BoT baseline and ES-Net on built-in synthetic people."""

from __future__ import annotations

from esreid.commands._args import command, threads_value

ORDER = 10


def add_parser(sub) -> None:
    p = command(sub, "demo", "train and evaluate the BoT baseline and ES-Net on built-in synthetic people",
                ["esreid demo --quick", "esreid demo --output outputs/demo --no-progress"],
                "Generate a synthetic Market-1501-style dataset, train the BoT baseline and ES-Net with a tiny "
                "ResNet on CPU and print both models' metrics.", handler=run)
    p.add_argument("--quick", action="store_true", help="a shorter run (under 2 minutes on 2 CPU cores), for CI")
    p.add_argument("--output", default="outputs/demo", help="data, checkpoints and logs (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=threads_value, default="auto", metavar="auto|N",
                   help="intra-op CPU threads (default: %(default)s, the cores left free; README 'Threads')")


def run(args) -> int:
    from esreid.demo import run_demo

    run_demo(quick=args.quick, output_dir=args.output, progress=not args.no_progress, threads=args.threads)
    return 0
