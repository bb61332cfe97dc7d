"""The run report hook: ``<output_dir>/report.html`` (metrics, CMC, training curves, CG-RAM explanations of the
current model on fixed test queries, config, timings, environment), rewritten at each evaluation and at the end of
training. Registered by the trainer on the main process when ``report: true`` (the default).

The explanations reuse the features of the evaluation just run (they come with its record, ``on_eval``): a report
costs a few CG-RAM passes (3 queries x top-5 pairs) and the drawing, not a second pass over the gallery.

What a report shows is computed here (:func:`cmc_curve`, :func:`esreid.engine.explain.report_grids`) and drawn by
:mod:`esreid.viz.runreport`; :func:`evaluation_report` is the report of ``esreid eval``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Mapping, Optional

import torch

from esreid.engine.hooks import HookBase

CMC_RANKS = 50


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


class ReportHook(HookBase):
    """Writes ``report.html`` (:func:`esreid.viz.runreport.write_run_report`) when an ``eval`` record is emitted, and
    after training when this session emitted none (a resumed run that had no epoch left): the trainer always
    evaluates after the last epoch, so that report is already the final one."""

    def __init__(self) -> None:
        self.grids: Dict[str, bytes] = {}
        self.cmc: Optional[List[float]] = None
        self.session_start = time.perf_counter()
        self.written = False

    @property
    def path(self) -> str:
        return os.path.join(self.trainer.out, "report.html")

    def before_train(self) -> None:
        self.session_start, self.written = time.perf_counter(), False

    def on_eval(self, record: Dict[str, Any], features: Any) -> None:
        from esreid.engine.explain import report_grids

        t = self.trainer
        grids = report_grids(t.model, t.cfg, t.device, t.dataset, features)
        self.grids = {f"epoch {record['epoch']}: {name}": png for name, png in grids.items()}
        self.cmc = cmc_curve(record, features, t.dataset, t.cfg, t.model.retrieval.metric)
        self.write(record)

    def after_train(self) -> None:
        if not self.written:
            self.write(self.trainer.state.metrics)
        self.trainer.log(f"report: {os.path.abspath(self.path)}")

    def write(self, metrics: Mapping[str, Any]) -> None:
        from esreid.files import read_jsonl
        from esreid.viz.runreport import run_timings, write_run_report

        t = self.trainer
        jsonl = os.path.join(t.out, "metrics.jsonl")
        records = read_jsonl(jsonl)
        timings = run_timings(records, {"this session (wall clock)": time.perf_counter() - self.session_start})
        write_run_report(self.path, t.cfg, metrics, cmc=self.cmc, records=records, grids=self.grids, timings=timings)
        self.written = True


def evaluation_report(out_dir: str, cfg: Any, model: torch.nn.Module, dataset, device: torch.device, features,
                      metrics: Mapping[str, Any], weights: str) -> str:
    """The report of ``esreid eval``: ``<out_dir>/report.html`` for ``model`` (loaded from ``weights``) with the
    evaluation's ``features`` and ``metrics``; the training curves when ``metrics.jsonl`` of the run lies next to
    ``weights``. Returns the path."""
    from esreid.engine.explain import report_grids
    from esreid.files import read_jsonl
    from esreid.viz.runreport import run_timings, run_title, write_run_report

    jsonl = os.path.join(os.path.dirname(os.path.abspath(weights)), "metrics.jsonl")
    records = read_jsonl(jsonl)
    cmc = cmc_curve(metrics, features, dataset, cfg, model.retrieval.metric)
    grids = report_grids(model, cfg, device, dataset, features)
    timings = run_timings(records, {"this evaluation": float(metrics.get("eval_seconds", 0.0))})
    return write_run_report(os.path.join(out_dir, "report.html"), cfg, metrics, cmc=cmc, records=records,
                            grids=grids, timings=timings, title=f"{run_title(cfg)}: {os.path.basename(weights)}")
