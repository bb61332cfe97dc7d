"""The run report hook: ``<output_dir>/report.html`` (metrics, CMC, training curves, CG-RAM explanations of the
current model on fixed test queries, config, timings, environment), rewritten at each evaluation and at the end of
training. Registered by the trainer on the main process when ``report: true`` (the default).

The explanations reuse the features of the evaluation just run (they come with its record, ``on_eval``): a report
costs a few CG-RAM passes (3 queries x top-5 pairs) and the drawing, not a second pass over the gallery.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Mapping, Optional

from esreid.engine.hooks import HookBase


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
        from esreid.viz.explain import report_grids
        from esreid.viz.runreport import cmc_curve

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
