"""``esreid extract``: features of a dataset split or of any images as .npz (the input of esreid search)."""

from __future__ import annotations

from esreid.commands._args import CONFIG, UsageError, command, trained_model

ORDER = 110


def add_parser(sub) -> None:
    p = command(sub, "extract", "features of a dataset split or of any images as .npz (input of esreid search)",
                [f"esreid extract --config {CONFIG} --weights W.pth --split gallery --out gallery.npz "
                 "data.root=/data/reid",
                 f"esreid extract --config {CONFIG} --weights W.pth --images photos/ --out photos.npz",
                 f"esreid extract --config {CONFIG} --weights W.pth --images list.txt --names market --out q.npz"],
                "Features (as esreid eval computes them) saved as .npz with feats and paths, plus ids (pids) and "
                "camids when known: the input of esreid search --gallery/--query. --split takes a split of the "
                "configured dataset; --images any folder (its images, recursively, sorted) or a text file listing "
                "image paths (one per line, relative to the file), no dataset layout needed.", overrides=True,
                handler=run)
    trained_model(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--split", choices=["query", "gallery", "train"], help="a split of the configured dataset")
    what.add_argument("--images", metavar="DIR|LIST", help="a folder of images or a text file listing image paths")
    p.add_argument("--names", metavar="LAYOUT", help="with --images: read pids and cameras from the file names; "
                                                     "'market' for <pid>_c<camera>... (Market-1501, Duke, VeRi)")
    p.add_argument("--out", required=True, help=".npz file to write")


def run(args) -> int:
    if args.images:
        from esreid.inference import extract_images

        extract_images(args.config, args.weights, args.images, args.out, args.names, args.overrides)
        return 0
    if args.names:
        raise UsageError("--names reads pids from the file names of --images; a --split has its pids already")
    from esreid.export import extract_split_features

    extract_split_features(args.config, args.weights, args.split, args.out, args.overrides)
    return 0
