"""``esreid explain`` (ranked lists with CG-RAM maps) and ``esreid visualize`` (one pair): why the model ranked these
gallery images first (ES-Net Figs. 1 and 5). The work is :func:`esreid.engine.explain.explain` / ``visualize``."""

from __future__ import annotations

from esreid.commands._args import CONFIG, command, existing_file, list_item, positive_int, trained_model

ORDER = 80


def add_parser(sub) -> None:
    p = command(sub, "explain", "ranked lists with CG-RAM maps: why the model ranked these gallery images first",
                [f"esreid explain --config {CONFIG} --weights W.pth --num-queries 5 data.root=/data/reid",
                 f"esreid explain --config {CONFIG} --weights W.pth --query-index 0 5 12 -k 5 --layer backbone.layer3",
                 "esreid explain --config C.yaml --weights esnet.pth --compare bot.pth --compare-config B.yaml "
                 "--where differ",
                 f"esreid explain --config {CONFIG} --weights W.pth --no-maps --num-queries 100 --where wrong"],
                "Rank the gallery of the configured dataset for some queries exactly as esreid eval does (the "
                "model's retrieval rule, flip included, the model placed as eval places it: device, channels_last, "
                "compile) and draw each query with its top-k: the score, green/red "
                "borders for true/false matches (junk greyed), and CG-RAM maps in both directions (the gallery "
                "image's and the query's, both explaining that pair's ranked similarity; ES-Net Figs. 1 and 5). "
                "Writes one PNG per query, index.html and ranked.json.", overrides=True, handler=run)
    trained_model(p)
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

    v = command(sub, "visualize", "CG-RAM maps of why a query matched a gallery image",
                [f"esreid visualize --config {CONFIG} --weights W.pth --query q.jpg --gallery g.jpg --out why.png"],
                "CG-RAM maps of one (query, gallery) pair for a trained model, saved as a PNG: the one-pair case "
                "of esreid explain, drawn the same way.", overrides=True, handler=run_visualize)
    trained_model(v)
    v.add_argument("--query", required=True, type=existing_file, help="query image file")
    v.add_argument("--gallery", required=True, type=existing_file, help="gallery image file")
    v.add_argument("--out", required=True, help="PNG to write")
    v.add_argument("--layer", default="", help="module name of the CG-RAM layer (default: the model's)")
    v.add_argument("--device", help="overrides the config's device (auto, cpu, cuda, cuda:N, mps; default: the "
                                    "config's)")
    v.add_argument("--tile-height", type=positive_int, default=192, help="image height in pixels (default: "
                                                                         "%(default)s)")


def run(args) -> int:
    """``esreid explain``."""
    from esreid.engine.explain import explain

    explain(args.config, args.weights, args.overrides, query_files=args.query or (), query_index=args.query_index,
            num_queries=args.num_queries, seed=args.seed, where=args.where, k=args.k, layer=args.layer,
            maps=not args.no_maps, compare=args.compare, compare_config=args.compare_config, out=args.out,
            batch_size=args.batch_size, tile_height=args.tile_height)
    return 0


def run_visualize(args) -> int:
    """``esreid visualize``."""
    from esreid.engine.explain import visualize

    visualize(args.config, args.weights, args.query, args.gallery, args.out, args.overrides, layer=args.layer,
              device=args.device, tile_height=args.tile_height)
    return 0
