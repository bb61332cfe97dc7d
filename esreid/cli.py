"""Command-line interface: ``esreid demo | train | eval | datasets check | search | visualize | export | extract``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

OVERRIDE_HELP = "dotted overrides of config keys, e.g. solver.lr=1e-4 data.root=/data/reid model.backbone=resnet50"


def _cmd_demo(args: argparse.Namespace) -> int:
    from esreid.demo import run_demo

    run_demo(quick=args.quick, output_dir=args.output, progress=not args.no_progress)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from esreid.config import load_config
    from esreid.engine.hooks import format_metrics
    from esreid.engine.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress)
    metrics = trainer.train()
    print(format_metrics(metrics, "final"))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from esreid.config import load_config
    from esreid.data.base import build_dataset
    from esreid.engine.checkpoint import load_trained_model
    from esreid.engine.evaluator import evaluate_model
    from esreid.engine.hooks import format_metrics
    from esreid.engine.trainer import resolve_device

    cfg = load_config(args.config, args.overrides)
    device = resolve_device(cfg.device)
    dataset = build_dataset(cfg.data.name, cfg.data.root, **cfg.data.args)
    print(dataset.summary())
    model = load_trained_model(cfg, args.weights).to(device)
    metrics = evaluate_model(model, dataset, cfg, device)
    print(format_metrics(metrics, "eval"))
    if args.json:
        print(json.dumps(metrics))
    return 0


def _cmd_datasets_cache(args: argparse.Namespace) -> int:
    """Build the decoded-image caches that training and evaluation with ``data.cache: true`` will read."""
    import dataclasses

    from esreid.config import load_config
    from esreid.data.base import build_dataset
    from esreid.data.loader import build_image_source

    cfg = load_config(args.config, args.overrides)
    dataset = build_dataset(cfg.data.name, cfg.data.root, **cfg.data.args)
    data_cfg = dataclasses.replace(cfg.data, cache=True)
    for split in ("train", "query", "gallery"):
        items = getattr(dataset, split)
        if items:
            source = build_image_source(data_cfg, items)
            print(f"{split}: {len(source)} images at {cfg.data.height}x{cfg.data.width} cached")
    return 0


def _cmd_datasets_check(args: argparse.Namespace) -> int:
    from esreid.data.check import check_main

    return check_main(args.root, args.verify)


# Commands with their own argument parser: ``esreid NAME ARGS`` -> ``module.func(ARGS)``.
DELEGATED = {
    "search": ("esreid.evaluation.search", "search_main", "top-k search of query features in a gallery index"),
    "visualize": ("esreid.viz.saliency", "visualize_main", "CG-RAM maps of why a query matched a gallery image"),
    "export": ("esreid.export", "export_main", "ONNX graph of a trained model, checked with onnxruntime"),
    "extract": ("esreid.export", "extract_main", "features of a dataset split as .npz (input of esreid search)"),
}


def _run_delegated(name: str, argv: List[str]) -> int:
    import importlib

    module, func, _ = DELEGATED[name]
    return int(getattr(importlib.import_module(module), func)(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esreid",
        description="ES-Net and erasing methods for person and vehicle re-identification.",
        epilog="Run 'esreid COMMAND --help' for the options of a command.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="train and evaluate the BoT baseline and ES-Net on built-in synthetic people",
                       description="Generate a synthetic Market-1501-style dataset, train the BoT baseline and ES-Net "
                                   "with a tiny ResNet on CPU and print both models' metrics.")
    d.add_argument("--quick", action="store_true", help="a shorter run (under 2 minutes on 2 CPU cores), for CI")
    d.add_argument("--output", default="outputs/demo", help="data, checkpoints and logs (default: %(default)s)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train a model from a YAML config; checkpoints, config.yaml, metrics.jsonl and "
                                   "results.json go to output_dir.")
    t.add_argument("--config", required=True, help="YAML config, e.g. configs/market1501/esnet.yaml")
    t.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue a run: a checkpoint path, or 'auto' (also when no value follows) for "
                        "<output_dir>/last.pth; before overrides write '--resume auto'")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint with the dataset's protocol",
                       description="Evaluate trained weights on the query/gallery split of the configured dataset.")
    e.add_argument("--config", required=True, help="the YAML config the model was trained with")
    e.add_argument("--weights", required=True, help="checkpoint (.pth) written by esreid train")
    e.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    e.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    e.set_defaults(func=_cmd_eval)

    ds = sub.add_parser("datasets", help="dataset utilities").add_subparsers(dest="datasets_command", required=True,
                                                                            metavar="SUBCOMMAND")
    c = ds.add_parser("check", help="find datasets under a root and print their summaries",
                      description="Print the ids/images/cameras table of every dataset found under ROOT.")
    c.add_argument("--root", required=True, help="folder holding the datasets (torchreid or fast-reid layout)")
    c.add_argument("--verify", action="store_true", help="compare the counts with the published ones")
    c.set_defaults(func=_cmd_datasets_check)
    k = ds.add_parser("cache", help="decode and resize a dataset once into the memory-mapped cache",
                      description="Build the decoded-image cache (data.cache_dir, default <data.root>/.esreid_cache) "
                                  "of every split of the configured dataset at data.height x data.width; runs with "
                                  "data.cache: true then reuse it. Rebuilt automatically when a file or the size "
                                  "changes.")
    k.add_argument("--config", required=True, help="the YAML config of the runs that will use the cache")
    k.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    k.set_defaults(func=_cmd_datasets_cache)

    for name, (_, _, text) in DELEGATED.items():  # listed for --help; main() hands their arguments over
        sub.add_parser(name, help=text, description=text)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from esreid.config import ConfigError
    from esreid.data.base import DatasetError
    from esreid.engine.checkpoint import CheckpointError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in DELEGATED:
            return _run_delegated(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (ConfigError, DatasetError, CheckpointError, FileExistsError) as e:
        print(f"esreid: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
