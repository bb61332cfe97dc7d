"""``esreid ablate``: the paper's tables and sweeps, configs x seeds, trained in turn and summarised."""

from __future__ import annotations

from esreid.commands._args import command, existing_file, list_item, seed_value

ORDER = 40


def add_parser(sub) -> None:
    p = command(sub, "ablate", "the paper's tables and figures: configs x seeds, trained in turn and summarised",
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
                overrides=True, handler=run)
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


def run(args) -> int:
    from esreid.ablate import ablate, default_config_root

    ablate(tables=args.table or (), sweeps=args.sweep or (), configs=args.configs or (),
           datasets=args.dataset or (), seeds=args.seeds, out=args.out,
           config_root=args.config_root or default_config_root(),
           overrides=args.overrides, progress=not args.no_progress and args.verbose, verbose=args.verbose)
    return 0
