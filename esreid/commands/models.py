"""``esreid models``: the registered models, backbones, poolings, datasets, protocols and search index kinds."""

from __future__ import annotations

import sys
from typing import Sequence

from esreid.commands._args import command

ORDER = 60


def add_parser(sub) -> None:
    command(sub, "models", "list the registered models, backbones, poolings, datasets and protocols",
            ["esreid models"], "One line per registered name (the first line of its docstring), for the config "
            "keys model.name, model.backbone, model.pooling, data.name.", handler=run)


def describe(obj: object, registered: Sequence[object]) -> str:
    """First line of ``obj``'s docstring; else of its module's when the module registers nothing else."""
    doc = obj.__doc__
    module = getattr(obj, "__module__", None)
    if not doc and sum(getattr(o, "__module__", None) == module for o in registered) == 1:
        doc = sys.modules[module].__doc__
    return doc.strip().splitlines()[0] if doc and doc.strip() else "(no description)"


def run(args) -> int:
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
