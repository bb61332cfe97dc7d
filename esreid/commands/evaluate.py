"""``esreid eval``: evaluate a checkpoint on each test case (test set x query occlusion) with its dataset's protocol;
results.json, cases.csv and report.html."""

from __future__ import annotations

import os

from esreid.commands._args import CONFIG, command, trained_model

ORDER = 30


def add_parser(sub) -> None:
    p = command(sub, "eval", "evaluate a checkpoint with the dataset's protocol",
                [f"esreid eval --config {CONFIG} --weights outputs/market1501/esnet/last.pth --json",
                 f"esreid eval --config {CONFIG} --weights W.pth test.datasets=[market1501,dukemtmcreid]",
                 f"esreid eval --config {CONFIG} --weights W.pth test.occlusion=[none,random:0.2,random:0.4]"],
                "Evaluate trained weights on the query/gallery split of each test set (test.datasets, default: the "
                "training datasets) under each query occlusion (test.occlusion, default none), each with its "
                "dataset's protocol; writes results.json (the first test case's metrics at the top level, every "
                "case's under 'cases'), cases.csv (a row per case) and report.html (metrics, CMC, CG-RAM "
                "explanations, occluded queries, the run's training curves when its metrics.jsonl lies next to the "
                "checkpoint) to --out.",
                overrides=True, handler=run)
    trained_model(p)
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    p.add_argument("--out", metavar="DIR", help="where report.html and results.json go (default: eval_<checkpoint "
                                                "name>/ next to the checkpoint)")


def run(args) -> int:
    import json

    from esreid.config import load_config
    from esreid.config.pretrained import split_peer
    from esreid.engine.hooks import format_cases
    from esreid.engine.reporting import evaluation_report
    from esreid.engine.session import open_trained
    from esreid.engine.testsets import build_cases, cases_csv, evaluate_run, open_datasets
    from esreid.files import atomic_write, check_writable

    cfg = load_config(args.config, args.overrides)
    path = split_peer(args.weights)[1]  # the file of a PEER:FILE spec (another toolkit's checkpoint)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(path)),
                                   "eval_" + os.path.splitext(os.path.basename(path))[0])
    check_writable(out, "--out")
    session = open_trained(cfg, args.weights)  # weights that do not fit are named before any dataset is scanned
    datasets = open_datasets(cfg, train=False)  # a missing test set before any feature is extracted
    print(datasets.summary())
    model, device = session.model, session.device
    metrics, results = evaluate_run(model, build_cases(cfg, datasets.test_sets), cfg, device)
    print("\n".join(format_cases(metrics, "eval")))
    atomic_write(os.path.join(out, "results.json"), json.dumps(metrics, indent=2))
    atomic_write(os.path.join(out, "cases.csv"), cases_csv(results))
    print(f"report: {evaluation_report(out, cfg, model, device, results, metrics, path)}")
    if args.json:  # the last line, for scripts
        print(json.dumps(metrics))
    return 0
