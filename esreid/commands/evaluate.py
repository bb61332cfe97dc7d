"""``esreid eval``: evaluate a checkpoint with the dataset's protocol; results.json and report.html."""

from __future__ import annotations

import os

from esreid.commands._args import CONFIG, command, trained_model

ORDER = 30


def add_parser(sub) -> None:
    p = command(sub, "eval", "evaluate a checkpoint with the dataset's protocol",
                [f"esreid eval --config {CONFIG} --weights outputs/market1501/esnet/last.pth --json"],
                "Evaluate trained weights on the query/gallery split of the configured dataset; writes results.json "
                "and report.html (metrics, CMC, CG-RAM explanations, the run's training curves when its "
                "metrics.jsonl lies next to the checkpoint) to --out.",
                overrides=True, handler=run)
    trained_model(p)
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    p.add_argument("--out", metavar="DIR", help="where report.html and results.json go (default: eval_<checkpoint "
                                                "name>/ next to the checkpoint)")


def run(args) -> int:
    import json

    from esreid.config import load_config
    from esreid.data.base import build_dataset
    from esreid.engine.evaluator import evaluate_features, extract_test_features
    from esreid.engine.reporting import evaluation_report
    from esreid.engine.session import open_trained
    from esreid.evaluation.metric_keys import format_metrics
    from esreid.files import atomic_write, check_writable

    cfg = load_config(args.config, args.overrides)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.weights)),
                                   "eval_" + os.path.splitext(os.path.basename(args.weights))[0])
    check_writable(out, "--out")
    session = open_trained(cfg, args.weights)
    model, device = session.model, session.device
    dataset = build_dataset(cfg.data.name, cfg.data.root, verbose=False, **cfg.data.args)
    print(dataset.summary())
    features = extract_test_features(model, dataset, cfg, device)
    metrics = evaluate_features(features, dataset, cfg, model.retrieval.metric)
    print(format_metrics(metrics, "eval"))
    atomic_write(os.path.join(out, "results.json"), json.dumps(metrics, indent=2))
    print(f"report: {evaluation_report(out, cfg, model, dataset, device, features, metrics, args.weights)}")
    if args.json:  # the last line, for scripts
        print(json.dumps(metrics))
    return 0
