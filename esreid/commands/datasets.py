"""``esreid datasets check | cache``: find datasets under a root; build the decoded-image caches."""

from __future__ import annotations

from esreid.commands._args import CONFIG, command, existing_dir, existing_file, group

ORDER = 50


def add_parser(sub) -> None:
    parser, dsub = group(sub, "datasets", "dataset utilities: check, cache",
                         "esreid datasets check --root /data/reid --verify")
    c = command(dsub, "check", "find datasets under a root and print their summaries",
                ["esreid datasets check --root /data/reid --verify", "esreid datasets check --root /data/my_people"],
                "Print the ids/images/cameras table of every dataset found under ROOT: the known datasets in the "
                "torchreid or fast-reid layout, and custom data ({train,query,gallery}.csv or "
                "{train,query,gallery}/<identity>/[<camera>/]<image>) in ROOT itself or in a folder of ROOT. Exit "
                "status 2 when one cannot be loaded (or, with --verify, does not match the published counts).",
                handler=run)
    c.add_argument("--root", required=True, type=existing_dir, help="folder holding the datasets (or custom data)")
    c.add_argument("--verify", action="store_true", help="compare the counts with the published ones")
    k = command(dsub, "cache", "decode and resize a dataset once into the memory-mapped cache",
                [f"esreid datasets cache --config {CONFIG} data.root=/data/reid"],
                "Build the decoded-image cache (data.cache_dir, default <data.root>/.esreid_cache) of every split "
                "of the configured dataset at data.height x data.width; runs with data.cache: true then reuse it. "
                "Rebuilt automatically when a file or the size changes.", overrides=True, handler=run_cache)
    k.add_argument("--config", required=True, type=existing_file,
                   help="the YAML config of the runs that will use the cache")
    parser.commands.update(check=c, cache=k)


def run(args) -> int:
    """``esreid datasets check``."""
    from esreid.data.check import check_main

    return check_main(args.root, args.verify)


def run_cache(args) -> int:
    """``esreid datasets cache``: the decoded-image caches that training and evaluation with ``data.cache: true``
    will read."""
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
