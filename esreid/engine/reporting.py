"""The run report hook: ``<output_dir>/report.html`` (metrics, CMC, training curves, CG-RAM explanations of the
current model on fixed test queries, config, timings, environment), rewritten at each evaluation and at the end of
training. Registered by the trainer on the main process when ``report: true`` (the default).

The explanations reuse the features of the evaluation just run (they come with its record, ``on_eval``): a report
costs a few CG-RAM passes (3 queries x top-5 pairs) and the drawing, not a second pass over the gallery. With several
test cases (test sets x occlusion conditions, :mod:`esreid.engine.testsets`) each case gets its own section: its
metrics, the explanations of its test set (unoccluded cases) or the same three queries occluded with their top-5
(occluded cases); the CMC curves of all cases share one plot, and the reliance figure shows the mAP each condition
costs.

What a report shows is computed here (:func:`report_content`: :func:`cmc_curve`, :func:`occluded_grids`,
:func:`esreid.engine.explain.report_grids`, :func:`esreid.engine.testsets.reliance`) and drawn by
:mod:`esreid.viz.runreport`; :func:`evaluation_report` is the report of ``esreid eval``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from esreid.engine.explain import REPORT_QUERIES, REPORT_TOP_K, draw, report_grids
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


def occluded_grids(cfg: Any, result: Any, metric: str, num: int = REPORT_QUERIES,
                   k: int = REPORT_TOP_K) -> Dict[str, bytes]:
    """The occluded queries of an occluded test case (``result``: a :class:`~esreid.engine.testsets.CaseResult`):
    the ``num`` queries the explanations show (drawn with seed 0), occluded as the evaluation saw them, each with its
    top-``k`` gallery images by ``result.features`` and distance ``metric``; one grid. Empty without a gallery."""
    from esreid.data.loader import build_image_source
    from esreid.data.occlusion import OccludedSource, fill_value
    from esreid.evaluation.distance import pairwise_distance, smallest_k
    from esreid.viz.explain import caption
    from esreid.viz.ranklist import Match, RankRow, draw_rank_grid, match_labels

    dataset, condition = result.case.test_set.dataset, result.case.condition
    if not dataset.gallery or not dataset.query:
        return {}
    picked = draw(len(dataset.query), num, seed=0)
    source = OccludedSource(build_image_source(cfg.data, dataset.query), [it.path for it in dataset.query],
                            condition, fill_value(cfg.test.occlusion_fill, cfg.data.mean))
    qf, gf = result.features.query[0][picked], result.features.gallery[0]
    dist = pairwise_distance(qf, gf, metric)
    top = smallest_k(dist, min(k, len(dataset.gallery)))
    rows = []
    for i, qi in enumerate(picked.tolist()):
        q = dataset.query[qi]
        ranked = [dataset.gallery[j] for j in top[i].tolist()]
        labels = match_labels(q.pid, q.camid, [g.pid for g in ranked], [g.camid for g in ranked])
        matches = [Match(g.path, float(dist[i, j]), label, caption=caption(g.pid, g.camid))
                   for g, j, label in zip(ranked, top[i].tolist(), labels)]
        rows.append(RankRow(source[qi], matches, title=f"query {qi} ({condition.name})",
                            query_caption=caption(q.pid, q.camid), score_name="distance"))
    return {f"occluded queries ({condition.name}) and their top {k}": draw_rank_grid(rows).png()}


def report_content(model: torch.nn.Module, cfg: Any, device: torch.device, results: Sequence[Any],
                   prefix: str = "") -> Tuple[Dict[str, bytes], Optional[List[float]], list, Dict]:
    """What a report shows of an evaluation's case ``results``: ``(grids, cmc, cases, reliance)``. One case: its
    explanations and CMC (``cases`` empty); several: a :class:`~esreid.viz.report.CaseSection` each (its metrics,
    CMC and figures) and the reliance values (:func:`esreid.engine.testsets.reliance`). Captions start with
    ``prefix``."""
    from esreid.engine.testsets import reliance
    from esreid.viz.report import CaseSection

    metric = model.retrieval.metric

    def figures(r) -> Dict[str, bytes]:
        grids = (occluded_grids(cfg, r, metric) if r.case.condition.occludes else
                 report_grids(model, cfg, device, r.case.test_set.dataset, r.features))
        return {f"{prefix}{name}": png for name, png in grids.items()}

    def cmc(r) -> Optional[List[float]]:
        return cmc_curve(r.metrics, r.features, r.case.test_set.dataset, cfg, metric)

    if len(results) == 1:
        return figures(results[0]), cmc(results[0]), [], {}
    cases = [CaseSection(r.case.name, r.metrics, figures(r), cmc(r)) for r in results]
    return {}, None, cases, reliance(results)


class ReportHook(HookBase):
    """Writes ``report.html`` (:func:`esreid.viz.runreport.write_run_report`) when an ``eval`` record is emitted, and
    after training when this session emitted none (a resumed run that had no epoch left): the trainer always
    evaluates after the last epoch, so that report is already the final one."""

    def __init__(self) -> None:
        self.grids: Dict[str, bytes] = {}
        self.cmc: Optional[List[float]] = None
        self.cases: list = []
        self.reliance: Dict[str, Dict[str, float]] = {}
        self.session_start = time.perf_counter()
        self.written = False

    @property
    def path(self) -> str:
        return os.path.join(self.trainer.out, "report.html")

    def before_train(self) -> None:
        self.session_start, self.written = time.perf_counter(), False

    def on_eval(self, record: Dict[str, Any], results: Sequence[Any]) -> None:
        t = self.trainer
        self.grids, self.cmc, self.cases, self.reliance = report_content(t.model, t.cfg, t.device, results,
                                                                         f"epoch {record['epoch']}: ")
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
        write_run_report(self.path, t.cfg, metrics, cmc=self.cmc, records=records, grids=self.grids, timings=timings,
                         cases=self.cases, reliance=self.reliance)
        self.written = True


def evaluation_report(out_dir: str, cfg: Any, model: torch.nn.Module, device: torch.device, results: Sequence[Any],
                      metrics: Mapping[str, Any], weights: str) -> str:
    """The report of ``esreid eval``: ``<out_dir>/report.html`` for ``model`` (loaded from ``weights``) with the
    evaluation's case ``results`` (:class:`~esreid.engine.testsets.CaseResult`, features included) and ``metrics``;
    the training curves when ``metrics.jsonl`` of the run lies next to ``weights``. Returns the path."""
    from esreid.files import read_jsonl
    from esreid.viz.runreport import run_timings, run_title, write_run_report

    jsonl = os.path.join(os.path.dirname(os.path.abspath(weights)), "metrics.jsonl")
    records = read_jsonl(jsonl)
    grids, cmc, cases, reliance = report_content(model, cfg, device, results)
    timings = run_timings(records, {"this evaluation": float(metrics.get("eval_seconds", 0.0))})
    return write_run_report(os.path.join(out_dir, "report.html"), cfg, metrics, cmc=cmc, records=records,
                            grids=grids, timings=timings, title=f"{run_title(cfg)}: {os.path.basename(weights)}",
                            cases=cases, reliance=reliance)
