"""The report of one run: ``report.html`` with the metrics table, the CMC curve, the training curves of
``metrics.jsonl``, CG-RAM explanations of a few queries, the config, timings and the environment
(:func:`esreid.viz.report.write_report` does the HTML). Written by :class:`esreid.engine.reporting.ReportHook` at each
evaluation of a training run and by ``esreid eval`` (:func:`esreid.engine.reporting.evaluation_report`), which
compute what it shows (the CMC curve, the explanation grids) and pass it here: this module only draws.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence


def run_title(cfg: Any) -> str:
    """``"esnet (resnet50) on market1501"``."""
    return f"{cfg.model.name} ({cfg.model.backbone}) on {cfg.data.name}"


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

