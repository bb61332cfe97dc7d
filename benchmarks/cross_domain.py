"""Cross-domain and occlusion at demo scale: two synthetic camera networks, each model trained on one, on the other and
on both, every run tested on both under query occlusion.

    .venv/bin/python benchmarks/cross_domain.py                    # BoT baseline and ES-Net, the full demo's scale
    .venv/bin/python benchmarks/cross_domain.py --models baseline --quick

The domains are the generator's synthetic people with different seeds (other identities, cameras, backgrounds) and
palettes: ``day`` (seed 0, default palette) and ``dusk`` (seed 1, ``palette: dusk``, a blue cast). Each model is the
``esreid demo`` recipe (resnet_tiny from scratch, 64x32, 16x4 batches, 30 epochs; ``--quick``: the quick demo's 64
identities and 8 epochs), trained with ``data.train`` = day, dusk, day + dusk, and evaluated once at the end on the
test cases ``test.datasets=[day, dusk]`` x ``test.occlusion`` (default none, random:0.2, random:0.4, lower:0.3):
the training's own evaluation, so every number is one of ``results.json``'s cases. Prints one markdown table of mAP /
R1 per (model, training set) and test case, and the wall time of each run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import hardware  # noqa: E402

from esreid.config import load_config  # noqa: E402
from esreid.demo import METHODS, SIZES, demo_overrides  # noqa: E402
from esreid.engine.trainer import Trainer  # noqa: E402

DOMAINS = {"day": (0, "default"), "dusk": (1, "dusk")}
TRAININGS = (("day",), ("dusk",), ("day", "dusk"))
MODELS = {extra[0].split("=")[1]: extra for extra in METHODS.values()}  # baseline, esnet: the demo's settings


def domain(name: str, root: str, quick: bool) -> str:
    """A ``data.train`` / ``test.datasets`` entry (YAML flow mapping) for synthetic domain ``name``."""
    seed, palette = DOMAINS[name]
    s = SIZES[quick]
    args = (f"{{num_train_ids: {s['train_ids']}, num_test_ids: {s['test_ids']}, images_per_id: {s['images']}, "
            f"seed: {seed}, palette: {palette}}}")
    return f"{{name: synthetic, label: {name}, root: {os.path.join(root, name)}, args: {args}}}"


def run(model: str, train: tuple, conditions: list, root: str, quick: bool, epochs: int = 0) -> tuple:
    """Train ``model`` on the domains ``train``; ``({case: metrics}, seconds)``."""
    common = [o for o in demo_overrides(root, quick) if not o.startswith(("data.name=", "data.args=", "data.root="))]
    overrides = common + MODELS[model] + [
        f"data.root={root}",
        "data.train=[" + ", ".join(domain(t, root, quick) for t in train) + "]",
        "test.datasets=[" + ", ".join(domain(d, root, quick) for d in DOMAINS) + "]",
        "test.occlusion=[" + ", ".join(conditions) + "]",
        f"output_dir={os.path.join(root, 'runs', model + '_' + '+'.join(train))}", "report=false",
    ] + ([f"solver.epochs={epochs}", "solver.warmup_epochs=0", f"solver.milestones=[{epochs}]"] if epochs else [])
    start = time.perf_counter()
    metrics = Trainer(load_config(None, overrides), progress=False, log=lambda line: None).train()
    return metrics["cases"], time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--conditions", nargs="+", default=["none", "random:0.2", "random:0.4", "lower:0.3"])
    p.add_argument("--quick", action="store_true", help="the quick demo's data (64 identities)")
    p.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs (0: the demo's)")
    p.add_argument("--root", help="where the data and runs go (default: a temporary folder)")
    args = p.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="esreid_xd_")
    print(f"hardware: {hardware()}")
    rows, cases = [], None
    for model in args.models:
        for train in TRAININGS:
            got, seconds = run(model, train, args.conditions, root, args.quick, args.epochs)
            cases = cases or list(got)
            rows.append((model, "+".join(train), got, seconds))
            print(f"{model} trained on {'+'.join(train)}: {seconds:.0f} s", flush=True)
    print("\nmAP / R1 (%) per test case (test set@condition), one seed:\n")
    print("| model | trained on | " + " | ".join(cases) + " | wall |")
    print("|---|---|" + "---|" * len(cases) + "---|")
    for model, train, got, seconds in rows:
        cells = [f"{100 * got[c]['mAP']:.1f} / {100 * got[c]['R1']:.1f}" for c in cases]
        print(f"| {model} | {train} | " + " | ".join(cells) + f" | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
