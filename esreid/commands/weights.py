"""``esreid weights fetch``: ImageNet weights for model.pretrained, downloaded once into the torch hub cache."""

from __future__ import annotations

from esreid.commands._args import command, group

ORDER = 120


def add_parser(sub) -> None:
    parser, wsub = group(sub, "weights", "ImageNet weights for model.pretrained: fetch into the torch hub cache",
                         "esreid weights fetch torchvision:resnet50")
    f = command(wsub, "fetch", "download ImageNet weights once into the torch hub cache",
                ["esreid weights fetch", "esreid weights fetch torchvision:resnet101",
                 "TORCH_HOME=/shared/torch esreid weights fetch https://example.org/resnet50-ibn.pth"],
                "Download the weights a config's model.pretrained names (torchvision:resnet18|34|50|101 or a URL) "
                "into $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints), where training looks "
                "first: machines that train offline need the file there (copy it, or share TORCH_HOME).",
                handler=run)
    f.add_argument("name", nargs="?", default="torchvision:resnet50", metavar="NAME|URL",
                   help="torchvision:<resnet> or a URL (default: torchvision:resnet50, what the shipped configs use)")
    parser.commands.update(fetch=f)


def run(args) -> int:
    """``esreid weights fetch [NAME|URL]``."""
    import os

    from esreid.models.backbones.weights import fetch

    path, downloaded = fetch(args.name, log=print)
    size = os.path.getsize(path) / 1e6
    print(f"{'saved' if downloaded else 'already cached:'} {path} ({size:.1f} MB); configs with model.pretrained: "
          f"{args.name} now train without the network here (copy the file to the same place, or set TORCH_HOME, on "
          "other machines)")
    return 0
