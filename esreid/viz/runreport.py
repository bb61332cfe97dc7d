"""The report of one run: ``report.html`` with the metrics table, the CMC curve, the training curves of
``metrics.jsonl``, CG-RAM explanations of a few queries, the config, timings and the environment
(:func:`esreid.viz.report.write_report` does the HTML). Written by :class:`esreid.engine.reporting.ReportHook` at each
evaluation of a training run and by ``esreid eval`` (:func:`evaluation_report`).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

CMC_RANKS = 50


def run_title(cfg: Any) -> str:
    """``"esnet (resnet50) on market1501"``."""
    return f"{cfg.model.name} ({cfg.model.backbone}) on {cfg.data.name}"


def cmc_curve(metrics: Mapping[str, Any], features, dataset, cfg: Any, metric: str,
              max_rank: int = CMC_RANKS) -> Optional[List[float]]:
    """The CMC at ranks 1..``max_rank``: the protocol's own ``cmc`` when ``metrics`` carry it, else computed by the
    dataset's protocol from ``features`` (:class:`~esreid.engine.evaluator.EvalFeatures`, those of the evaluation
    that gave ``metrics``); None without either."""
    if metrics.get("cmc"):
        return [float(v) for v in list(metrics["cmc"])[:max_rank]]
    if features is None:
        return None
    from esreid.engine.evaluator import evaluate_features

    ranks = range(1, max_rank + 1)
    curve = evaluate_features(features, dataset, cfg, metric, ranks=ranks)
    return [float(curve[f"R{r}"]) for r in ranks]


def run_timings(records: Sequence[Mapping[str, Any]], extra: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
    """Durations (seconds) from a run's ``metrics.jsonl`` records: the epochs' total and mean, the last evaluation;
    then ``extra``."""
    epochs = [float(r["seconds"]) for r in records if r.get("type") == "epoch" and "seconds" in r]
    evals = [float(r["eval_seconds"]) for r in records if r.get("type") == "eval" and "eval_seconds" in r]
    out: Dict[str, float] = {}
    if epochs:
        out[f"training, {len(epochs)} epochs"] = sum(epochs)
        out["mean epoch"] = sum(epochs) / len(epochs)
    if evals:
        out["last evaluation"] = evals[-1]
    out.update(extra or {})
    return out


def write_run_report(path: str, cfg: Any, metrics: Mapping[str, Any], *, cmc: Optional[Sequence[float]] = None,
                     records: Sequence[Mapping[str, Any]] = (), grids: Optional[Mapping[str, bytes]] = None,
                     timings: Optional[Mapping[str, float]] = None, title: str = "") -> str:
    """``report.html`` of a run at ``path`` (atomic): ``metrics`` (fractions), the CMC curve ``cmc``, the training
    curves of ``records``, the explanation ``grids`` (caption -> PNG), ``cfg`` as YAML, ``timings``."""
    from esreid.config import dump_yaml
    from esreid.viz.plots import plot_cmc, plot_training
    from esreid.viz.report import write_report

    title = title or run_title(cfg)
    plots = {"CMC": plot_cmc({title: cmc}) if cmc else None, "training curves": plot_training(records)}
    return write_report(path, title, metrics, plots=plots, grids=grids, config_yaml=dump_yaml(cfg), timings=timings)


def evaluation_report(out_dir: str, cfg: Any, model: torch.nn.Module, dataset, device: torch.device, features,
                      metrics: Mapping[str, Any], weights: str) -> str:
    """The report of ``esreid eval``: ``<out_dir>/report.html`` for ``model`` (loaded from ``weights``) with the
    evaluation's ``features`` and ``metrics``; the training curves when ``metrics.jsonl`` of the run lies next to
    ``weights``. Returns the path."""
    from esreid.files import read_jsonl
    from esreid.viz.explain import report_grids

    jsonl = os.path.join(os.path.dirname(os.path.abspath(weights)), "metrics.jsonl")
    records = read_jsonl(jsonl)
    cmc = cmc_curve(metrics, features, dataset, cfg, model.retrieval.metric)
    grids = report_grids(model, cfg, device, dataset, features)
    timings = run_timings(records, {"this evaluation": float(metrics.get("eval_seconds", 0.0))})
    return write_run_report(os.path.join(out_dir, "report.html"), cfg, metrics, cmc=cmc, records=records,
                            grids=grids, timings=timings, title=f"{run_title(cfg)}: {os.path.basename(weights)}")
