"""Command-line interface: ``esreid COMMAND ...``; ``esreid --help`` lists the commands.

Error policy (:func:`main`): a mistake the user can fix (any :class:`~esreid.errors.EsreidError`, a command line
argparse rejects, a file that is missing, exists already or cannot be accessed) prints one line
``esreid: error: <what, where, how to fix>`` on stderr and exits 2; any other exception is a bug: one line
``esreid: internal error: <type>: <message> ...``, exit 1.
``--debug`` (anywhere on the line) prints the traceback first. Ctrl-C prints ``esreid: interrupted`` (and the
exception's ``hint``, e.g. how to resume) and exits 130.

Parsing: ``key=value`` tokens are config overrides wherever they stand (options and overrides in any order; after an
option taking a list, such as ``ablate --seeds 0 1``, put them before the option or end its list with another one).
Building the parser imports nothing heavy (no torch, numpy, models): ``--help`` answers at once and each handler
imports what it needs. ``ablate``, ``export``, ``extract``, ``explain``, ``visualize`` and ``search`` are parsed here
too, and their handlers (``module.function(args)``) are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from esreid import __version__
from esreid.errors import EsreidError

OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")  # section.key=value (the value is YAML)
OVERRIDE_HELP = "config overrides, anywhere on the line, e.g. solver.lr=1e-4 data.root=/data/reid (values are YAML)"
CONFIG = "configs/market1501/esnet.yaml"
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions to the terminal; keeps indented lines (an epilog's example commands) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(line if line.startswith("  ") else super(HelpFormatter, self)._fill_text(line, width, indent)
                         for line in text.splitlines())


class UsageError(EsreidError):
    """A command line the parser rejects."""


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors raise :class:`UsageError` (one line, exit 2 in :func:`main`).

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


# --- handlers: each imports what it needs ----------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from esreid.demo import run_demo

    run_demo(quick=args.quick, output_dir=args.output, progress=not args.no_progress, threads=args.threads)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from esreid.config import load_config
    from esreid.engine.distributed import launched_rank
    from esreid.engine.hooks import format_metrics
    from esreid.engine.runlock import run_lock
    from esreid.engine.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    with run_lock(cfg.output_dir, launched_rank()):  # one training process per output_dir (esreid.engine.runlock)
        trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress, allow_changes=args.allow_changes,
                          command=train_command(args))
        metrics = trainer.train()
    trainer.log(format_metrics(metrics, "final"))
    return 0


def train_command(args: argparse.Namespace) -> str:
    """The ``esreid train`` command line of ``args`` without ``--resume`` (what a hint extends to continue the run)."""
    import shlex

    options = (["--allow-changes", *args.allow_changes] if args.allow_changes else []) + \
        (["--no-progress"] if args.no_progress else [])
    return shlex.join(["esreid", "train", "--config", args.config, *args.overrides, *options])


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from esreid.config import load_config
    from esreid.data.base import build_dataset
    from esreid.engine.checkpoint import load_trained_model
    from esreid.engine.compile import place_model
    from esreid.engine.evaluator import evaluate_features, extract_test_features
    from esreid.engine.hooks import format_metrics
    from esreid.engine.threads import apply_threads
    from esreid.engine.trainer import resolve_device
    from esreid.files import atomic_write_text, check_writable
    from esreid.viz.runreport import evaluation_report

    cfg = load_config(args.config, args.overrides)
    apply_threads(cfg)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.weights)),
                                   "eval_" + os.path.splitext(os.path.basename(args.weights))[0])
    check_writable(out, "--out")
    device = resolve_device(cfg.device)
    dataset = build_dataset(cfg.data.name, cfg.data.root, verbose=False, **cfg.data.args)
    print(dataset.summary())
    model = place_model(load_trained_model(cfg, args.weights), cfg.solver, device)
    features = extract_test_features(model, dataset, cfg, device)
    metrics = evaluate_features(features, dataset, cfg, model.retrieval.metric)
    print(format_metrics(metrics, "eval"))
    atomic_write_text(os.path.join(out, "results.json"), json.dumps(metrics, indent=2))
    print(f"report: {evaluation_report(out, cfg, model, dataset, device, features, metrics, args.weights)}")
    if args.json:  # the last line, for scripts
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


def describe(obj: object, registered: Sequence[object]) -> str:
    """First line of ``obj``'s docstring; else of its module's when the module registers nothing else."""
    doc = obj.__doc__
    module = getattr(obj, "__module__", None)
    if not doc and sum(getattr(o, "__module__", None) == module for o in registered) == 1:
        doc = sys.modules[module].__doc__
    return doc.strip().splitlines()[0] if doc and doc.strip() else "(no description)"


def _cmd_models(args: argparse.Namespace) -> int:
    import esreid.data.datasets  # noqa: F401  (registers the loaders)
    from esreid.data.base import DATASETS
    from esreid.evaluation.protocols import PROTOCOLS
    from esreid.evaluation.search import INDEX_KINDS
    from esreid.models import MODELS
    from esreid.models.backbones import BACKBONES
    from esreid.models.pooling import POOLING

    sections = [("models (model.name)", MODELS), ("backbones (model.backbone)", BACKBONES),
                ("poolings (model.pooling)", POOLING), ("datasets (data.name)", DATASETS),
                ("protocols (a dataset's evaluation)", PROTOCOLS), ("search index kinds (esreid search --index)",
                                                                    INDEX_KINDS)]
    for title, registry in sections:
        objs = [obj for _, obj in registry.items()]
        width = max(map(len, registry.names()))
        print(f"{title}:")
        for name, obj in registry.items():
            print(f"  {name:<{width}}  {describe(obj, objs)}")
    return 0


def _delegated(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A handler calling ``module.function(args)`` with the parsed arguments, importing ``module`` only then (the
    parser itself stays light)."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), function)(args) or 0)

    return run


# --- the parser ------------------------------------------------------------------------------------------------------
def _command(sub, name: str, help: str, examples: Sequence[str], description: str = "", overrides: bool = False,
             handler: Optional[Callable[[argparse.Namespace], int]] = None) -> Parser:
    """A subcommand with its examples as epilog, ``--debug``, and (``overrides``) ``KEY=VALUE`` positionals."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    p = sub.add_parser(name, help=help, description=description or help, epilog=epilog)
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    if overrides:
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    if handler is not None:
        p.set_defaults(handler=handler)
    return p


def _trained_model(p: Parser) -> None:
    """``--config`` and ``--weights``: the trained model a command loads."""
    p.add_argument("--config", required=True, type=existing_file, help="the YAML config the model was trained with")
    p.add_argument("--weights", required=True, type=existing_file,
                   help="checkpoint (.pth) written by esreid train, or a state dict")


def _add_demo(sub) -> None:
    p = _command(sub, "demo", "train and evaluate the BoT baseline and ES-Net on built-in synthetic people",
                 ["esreid demo --quick", "esreid demo --output outputs/demo --no-progress"],
                 "Generate a synthetic Market-1501-style dataset, train the BoT baseline and ES-Net with a tiny "
                 "ResNet on CPU and print both models' metrics.", handler=_cmd_demo)
    p.add_argument("--quick", action="store_true", help="a shorter run (under 2 minutes on 2 CPU cores), for CI")
    p.add_argument("--output", default="outputs/demo", help="data, checkpoints and logs (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=threads_value, default="auto", metavar="auto|N",
                   help="intra-op CPU threads (default: %(default)s, the cores left free; README 'Threads')")


def _add_train(sub) -> None:
    p = _command(sub, "train", "train a model from a YAML config",
                 [f"esreid train --config {CONFIG} data.root=/data/reid solver.amp=bf16",
                  f"esreid train --config {CONFIG} --resume auto solver.epochs=150",
                  f"esreid train --config {CONFIG} --resume auto --allow-changes solver.lr solver.lr=1e-4"],
                 "Train a model from a YAML config; checkpoints, config.yaml, metrics.jsonl and results.json go to "
                 "output_dir. A run already in output_dir is never overwritten: continue it with --resume auto (a "
                 "config that changes the run is refused unless --allow-changes names the changed keys).",
                 overrides=True, handler=_cmd_train)
    p.add_argument("--config", required=True, type=existing_file, help=f"YAML config, e.g. {CONFIG}")
    p.add_argument("--resume", type=resume_value, metavar="auto|CKPT",
                   help="continue a run: 'auto' for <output_dir>/last.pth, or a checkpoint path")
    p.add_argument("--allow-changes", nargs="+", action="extend", default=[], metavar="KEY",
                   help="config keys (or sections) a resumed run may change although the checkpoint was trained with "
                        "other values (e.g. solver.lr); other changes are refused")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_eval(sub) -> None:
    p = _command(sub, "eval", "evaluate a checkpoint with the dataset's protocol",
                 [f"esreid eval --config {CONFIG} --weights outputs/market1501/esnet/last.pth --json"],
                 "Evaluate trained weights on the query/gallery split of the configured dataset; writes results.json "
                 "and report.html (metrics, CMC, CG-RAM explanations, the run's training curves when its "
                 "metrics.jsonl lies next to the checkpoint) to --out.",
                 overrides=True, handler=_cmd_eval)
    _trained_model(p)
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    p.add_argument("--out", metavar="DIR", help="where report.html and results.json go (default: eval_<checkpoint "
                                                "name>/ next to the checkpoint)")


def _group(sub, name: str, help: str, example: str):
    """A command with subcommands (``esreid NAME SUBCOMMAND``): its parser and the action adding the subcommands."""
    group = sub.add_parser(name, help=help, description=f"{help[0].upper()}{help[1:]}; run 'esreid {name} "
                                                        "SUBCOMMAND --help'.", epilog=f"examples:\n  {example}")
    return group, group.add_subparsers(dest=f"{name}_command", required=True, metavar="SUBCOMMAND")


def _add_datasets(sub) -> None:
    group, dsub = _group(sub, "datasets", "dataset utilities: check, cache",
                         "esreid datasets check --root /data/reid --verify")
    c = _command(dsub, "check", "find datasets under a root and print their summaries",
                 ["esreid datasets check --root /data/reid --verify", "esreid datasets check --root /data/my_people"],
                 "Print the ids/images/cameras table of every dataset found under ROOT: the known datasets in the "
                 "torchreid or fast-reid layout, and custom data ({train,query,gallery}.csv or "
                 "{train,query,gallery}/<identity>/[<camera>/]<image>) in ROOT itself or in a folder of ROOT. Exit "
                 "status 2 when one cannot be loaded (or, with --verify, does not match the published counts).",
                 handler=_cmd_datasets_check)
    c.add_argument("--root", required=True, type=existing_dir, help="folder holding the datasets (or custom data)")
    c.add_argument("--verify", action="store_true", help="compare the counts with the published ones")
    k = _command(dsub, "cache", "decode and resize a dataset once into the memory-mapped cache",
                 [f"esreid datasets cache --config {CONFIG} data.root=/data/reid"],
                 "Build the decoded-image cache (data.cache_dir, default <data.root>/.esreid_cache) of every split "
                 "of the configured dataset at data.height x data.width; runs with data.cache: true then reuse it. "
                 "Rebuilt automatically when a file or the size changes.", overrides=True, handler=_cmd_datasets_cache)
    k.add_argument("--config", required=True, type=existing_file,
                   help="the YAML config of the runs that will use the cache")
    group.commands.update(check=c, cache=k)


def _add_models(sub) -> None:
    _command(sub, "models", "list the registered models, backbones, poolings, datasets and protocols",
             ["esreid models"], "One line per registered name (the first line of its docstring), for the config "
             "keys model.name, model.backbone, model.pooling, data.name.", handler=_cmd_models)


def _add_search(sub) -> None:
    p = _command(sub, "search", "top-k gallery images of each query, from features (faiss)",
                 ["esreid search --gallery gallery.npz --query query.npz -k 10 --output top10.json",
                  "esreid search --gallery gallery.npz --query query.npz --index hnsw --save-index gallery_index.npz",
                  "esreid search --load-index gallery_index.npz --query query.npz -k 5 --output top5.csv",
                  "esreid search --gallery gallery.npz --query query.npz -k 8 --html top8.html --grid top8/"],
                 "Index the gallery features (or load a saved index) and rank the gallery for every query: gallery "
                 "image path, row, pid, camid and distance per match (paths, pids, camids when the .npz holds them, "
                 "as esreid extract writes them). -k is capped at the gallery size. Output columns: see "
                 "esreid.evaluation.search. --html and --grid show the images (they need the paths).",
                 handler=_delegated("esreid.evaluation.search", "search_main"))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gallery", type=existing_file, metavar="GALLERY.npz",
                     help=".npz with feats (N, D) and optional ids (pids), camids, paths (N,): esreid extract output")
    src.add_argument("--load-index", type=existing_file, metavar="INDEX.npz",
                     help="a gallery index .npz written by --save-index")
    p.add_argument("--query", required=True, type=existing_file, metavar="QUERY.npz",
                   help=".npz with feats (M, D) (+ ids, camids, paths)")
    p.add_argument("-k", type=positive_int, default=10, help="matches per query (default: %(default)s)")
    p.add_argument("--index", help="index kind of a new index: flat (exact, default), ivf or hnsw (approximate)")
    p.add_argument("--metric", choices=["cosine", "euclidean"], help="distance of a new index (default: cosine)")
    p.add_argument("--save-index", metavar="FILE.npz", help="write the built index (with the gallery's paths) here")
    p.add_argument("--output", metavar="FILE", help="write the matches to FILE.json, FILE.csv or FILE.npz "
                                                     "(default: print them)")
    p.add_argument("--html", metavar="FILE.html", help="a page showing each query and its top-k images (linked, "
                                                        "not copied; green/red borders when pids are known)")
    p.add_argument("--grid", metavar="DIR", help="draw one PNG per query (query + top-k, distances) and an "
                                                 "index.html into DIR")


def _add_explain(sub) -> None:
    p = _command(sub, "explain", "ranked lists with CG-RAM maps: why the model ranked these gallery images first",
                 [f"esreid explain --config {CONFIG} --weights W.pth --num-queries 5 data.root=/data/reid",
                  f"esreid explain --config {CONFIG} --weights W.pth --query-index 0 5 12 -k 5 --layer backbone.layer3",
                  "esreid explain --config C.yaml --weights esnet.pth --compare bot.pth --compare-config B.yaml "
                  "--where differ",
                  f"esreid explain --config {CONFIG} --weights W.pth --no-maps --num-queries 100 --where wrong"],
                 "Rank the gallery of the configured dataset for some queries exactly as esreid eval does (the "
                 "model's retrieval rule, flip included) and draw each query with its top-k: the score, green/red "
                 "borders for true/false matches (junk greyed), and CG-RAM maps in both directions (the gallery "
                 "image's and the query's, both explaining that pair's ranked similarity; ES-Net Figs. 1 and 5). "
                 "Writes one PNG per query, index.html and ranked.json.", overrides=True,
                 handler=_delegated("esreid.viz.explain", "explain_main"))
    _trained_model(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--query", nargs="+", type=list_item(existing_file, "an image file"), metavar="IMG",
                       help="query image files (identities known when they are images of the dataset)")
    which.add_argument("--query-index", nargs="+", type=list_item(int, "a query row"), metavar="I",
                       help="rows of the dataset's query split")
    p.add_argument("--num-queries", type=positive_int, metavar="N",
                   help="draw N of the queries (reproducibly, --seed); default 8 when no query is named")
    p.add_argument("--seed", type=int, default=0, help="seed of the query draw (default: %(default)s)")
    p.add_argument("--where", choices=["any", "differ", "wrong"], default="any",
                   help="keep the queries whose rank-1 (junk skipped, as R1 counts it) differs between the two "
                        "models (differ, needs --compare) or is a false match of the first model (wrong); default: "
                        "any")
    p.add_argument("-k", type=positive_int, default=10, help="matches per query (default: %(default)s)")
    p.add_argument("--layer", default="", help="module name of the CG-RAM layer, e.g. backbone.layer3 or "
                                               "backbone.bn1 (default: the model's saliency layer)")
    p.add_argument("--no-maps", action="store_true", help="rank grids only, no CG-RAM (fast, for many queries)")
    p.add_argument("--compare", type=existing_file, metavar="W2.pth", help="a second model drawn under the first")
    p.add_argument("--compare-config", type=existing_file, metavar="C2.yaml",
                   help="the second model's config (default: --config)")
    p.add_argument("--out", help="output folder (default: explain/ next to --weights)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="pairs per CG-RAM pass (default: %(default)s)")
    p.add_argument("--tile-height", type=positive_int, default=128, help="image height in pixels in the pictures "
                                                                         "(default: %(default)s)")


def _add_ablate(sub) -> None:
    p = _command(sub, "ablate", "the paper's tables and figures: configs x seeds, trained in turn and summarised",
                 ["esreid ablate --table III --dataset synthetic --seeds 0 1",
                  "esreid ablate data.root=/data/reid --table II III --dataset market1501 --seeds 0 1 2 "
                  "--out outputs/ablate",
                  "esreid ablate data.root=/data/reid --sweep fig4_erase_ratio --dataset market1501 --seeds 0",
                  "esreid ablate --configs configs/market1501/base.yaml configs/market1501/esnet.yaml --seeds 0 1"],
                 "Train and evaluate each (config, dataset, seed) cell with the normal trainer, one after the other, "
                 "each into <out>/<dataset>/<config>/seed<k>; rerunning the command skips finished cells and resumes "
                 "an interrupted one. Writes table_<T>.md/.csv (mean ± std over seeds, the paper's figure beside each "
                 "cell) and, for sweeps, sweep_<name>_<dataset>.md/.csv/.png. --dataset synthetic runs on built-in "
                 "synthetic people at demo scale (seconds per cell on a CPU). Overrides apply to every cell.",
                 overrides=True, handler=_delegated("esreid.ablate", "ablate_main"))
    p.add_argument("--table", nargs="+", type=list_item(str, "a table"), metavar="T",
                   help="ES-Net paper tables: I II III IV V VI VII VIII IX X")
    p.add_argument("--sweep", nargs="+", type=list_item(str, "a sweep"), metavar="NAME",
                   help="a sweep spec: a name under <config-root>/sweeps (fig4_erase_ratio, fig6_batch_composition) "
                        "or a .yaml path")
    p.add_argument("--configs", nargs="+", type=list_item(existing_file, "a config file"), metavar="CONFIG",
                   help="any configs, a row each")
    p.add_argument("--dataset", nargs="+", type=list_item(str, "a dataset"), metavar="D",
                   help="datasets (config folders) of the tables to run, default all; 'synthetic': demo scale")
    p.add_argument("--seeds", nargs="+", type=list_item(seed_value, "a seed"), default=[0], metavar="S",
                   help="seeds, each a cell of its own (default: 0)")
    p.add_argument("--out", default="outputs/ablate", help="cells, tables and plots (default: %(default)s)")
    p.add_argument("--config-root", help="folder of <dataset>/<config>.yaml and sweeps/ (default: ./configs, else "
                                          "the configs of the esreid checkout)")
    p.add_argument("--verbose", action="store_true", help="the trainer's lines and progress bars")
    p.add_argument("--no-progress", action="store_true", help="no progress bars with --verbose")


def _add_visualize(sub) -> None:
    p = _command(sub, "visualize", "CG-RAM maps of why a query matched a gallery image",
                 [f"esreid visualize --config {CONFIG} --weights W.pth --query q.jpg --gallery g.jpg --out why.png"],
                 "CG-RAM maps of one (query, gallery) pair for a trained model, saved as a PNG: the one-pair case "
                 "of esreid explain, drawn the same way.", overrides=True,
                 handler=_delegated("esreid.viz.explain", "visualize_main"))
    _trained_model(p)
    p.add_argument("--query", required=True, type=existing_file, help="query image file")
    p.add_argument("--gallery", required=True, type=existing_file, help="gallery image file")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--layer", default="", help="module name of the CG-RAM layer (default: the model's)")
    p.add_argument("--device", default="cpu", help="default: %(default)s")
    p.add_argument("--tile-height", type=positive_int, default=192, help="image height in pixels (default: "
                                                                         "%(default)s)")


def _add_export(sub) -> None:
    p = _command(sub, "export", "ONNX graph of a trained model, checked with onnxruntime",
                 [f"esreid export --config {CONFIG} --weights W.pth --out model.onnx --dynamic-batch test.flip=false"],
                 "A trained model as an ONNX graph (normalised images -> retrieval features), checked with "
                 "onnxruntime against PyTorch. Needs the onnx extra.", overrides=True,
                 handler=_delegated("esreid.export", "export_main"))
    _trained_model(p)
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--height", type=int, help="input height (default: data.height)")
    p.add_argument("--width", type=int, help="input width (default: data.width)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument("--dynamic-batch", action="store_true", help="a dynamic batch axis (default: batch fixed to 1)")


def _add_extract(sub) -> None:
    p = _command(sub, "extract", "features of a dataset split or of any images as .npz (input of esreid search)",
                 [f"esreid extract --config {CONFIG} --weights W.pth --split gallery --out gallery.npz "
                  "data.root=/data/reid",
                  f"esreid extract --config {CONFIG} --weights W.pth --images photos/ --out photos.npz",
                  f"esreid extract --config {CONFIG} --weights W.pth --images list.txt --names market --out q.npz"],
                 "Features (as esreid eval computes them) saved as .npz with feats and paths, plus ids (pids) and "
                 "camids when known: the input of esreid search --gallery/--query. --split takes a split of the "
                 "configured dataset; --images any folder (its images, recursively, sorted) or a text file listing "
                 "image paths (one per line, relative to the file), no dataset layout needed.", overrides=True,
                 handler=_delegated("esreid.export", "extract_main"))
    _trained_model(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--split", choices=["query", "gallery", "train"], help="a split of the configured dataset")
    what.add_argument("--images", metavar="DIR|LIST", help="a folder of images or a text file listing image paths")
    p.add_argument("--names", metavar="LAYOUT", help="with --images: read pids and cameras from the file names; "
                                                     "'market' for <pid>_c<camera>... (Market-1501, Duke, VeRi)")
    p.add_argument("--out", required=True, help=".npz file to write")


def _add_weights(sub) -> None:
    group, wsub = _group(sub, "weights", "ImageNet weights for model.pretrained: fetch into the torch hub cache",
                         "esreid weights fetch torchvision:resnet50")
    f = _command(wsub, "fetch", "download ImageNet weights once into the torch hub cache",
                 ["esreid weights fetch", "esreid weights fetch torchvision:resnet101",
                  "TORCH_HOME=/shared/torch esreid weights fetch https://example.org/resnet50-ibn.pth"],
                 "Download the weights a config's model.pretrained names (torchvision:resnet18|34|50|101 or a URL) "
                 "into $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints), where training looks "
                 "first: machines that train offline need the file there (copy it, or share TORCH_HOME).",
                 handler=_delegated("esreid.models.backbones.weights", "fetch_main"))
    f.add_argument("name", nargs="?", default="torchvision:resnet50", metavar="NAME|URL",
                   help="torchvision:<resnet> or a URL (default: torchvision:resnet50, what the shipped configs use)")
    group.commands.update(fetch=f)


COMMANDS = [_add_demo, _add_train, _add_eval, _add_ablate, _add_datasets, _add_models, _add_search, _add_explain,
            _add_visualize, _add_export, _add_extract, _add_weights]


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
    for add in COMMANDS:
        add(sub)
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
