"""``esreid search``: top-k gallery images of each query from features (faiss), printed, written or drawn."""

from __future__ import annotations

from esreid.commands._args import command, existing_file, positive_int

ORDER = 70


def add_parser(sub) -> None:
    p = command(sub, "search", "top-k gallery images of each query, from features (faiss)",
                ["esreid search --gallery gallery.npz --query query.npz -k 10 --output top10.json",
                 "esreid search --gallery gallery.npz --query query.npz --index hnsw --save-index gallery_index.npz",
                 "esreid search --load-index gallery_index.npz --query query.npz -k 5 --output top5.csv",
                 "esreid search --gallery gallery.npz --query query.npz -k 8 --html top8.html --grid top8/"],
                "Index the gallery features (or load a saved index) and rank the gallery for every query: gallery "
                "image path, row, pid, camid and distance per match (paths, pids, camids when the .npz holds them, "
                "as esreid extract writes them). -k is capped at the gallery size. Output columns: see "
                "esreid.evaluation.search. --html and --grid show the images (they need the paths).",
                handler=run)
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


def run(args) -> int:
    """Top-k matches printed or written to --output (:mod:`esreid.evaluation.search`), drawn with ``--html`` (a page
    linking the images) and ``--grid`` (a PNG per query): :mod:`esreid.viz.matches`."""
    from esreid.evaluation.search import (
        SearchError,
        check_drawable,
        format_results,
        output_format,
        search_files,
        write_results,
    )

    if args.output:
        output_format(args.output)  # a wrong extension stops before any work
    if args.html and not args.html.lower().endswith((".html", ".htm")):
        raise SearchError(f"--html {args.html}: expected a file name ending in .html")
    if args.html or args.grid:
        check_drawable(args.query, args.gallery, args.load_index)
    results = search_files(args.query, args.k, gallery=args.gallery, load_index=args.load_index, kind=args.index,
                           metric=args.metric, save_index=args.save_index)
    if args.save_index:
        print(f"wrote the {results.kind} index of {results.gallery_size} gallery items to {args.save_index}")
    if args.output:
        write_results(results, args.output)
        print(f"wrote the top-{results.k} matches of {len(results)} queries to {args.output}")
    if args.html or args.grid:
        from esreid.viz.matches import write_match_grids, write_match_html

        if args.html:
            print(f"wrote {write_match_html(results, args.html)}: the top-{results.k} images of {len(results)} "
                  "queries (it links the image files by paths relative to the page)")
        if args.grid:
            print(f"wrote {len(results)} rank grids to {args.grid} (open {write_match_grids(results, args.grid)})")
    if not (args.output or args.html or args.grid):
        print("\n".join(format_results(results)))
    return 0
