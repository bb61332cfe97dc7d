"""Datasets of a run and evaluation over its test cases: the one mechanism behind several training datasets
(``data.train``), several test sets (``test.datasets``) and evaluation under occlusion (``test.occlusion``).

A **test case** is (test set, occlusion condition). Every case is evaluated with its test set's own protocol
(Market CMC/mAP/mINP, CUHK03 single-gallery-shot, VehicleID trials: ``dataset.protocol``) and its own
``protocol_args``. Per test set the gallery features are extracted once and shared by its conditions; the query
features are extracted once per condition, the queries occluded as :mod:`esreid.data.occlusion` says (gallery images
are never occluded). Case names: the test set's key (``label`` or dataset name), with ``@<condition>`` unless the
condition is ``none`` (:func:`esreid.config.case_name`).

An evaluation's metrics (``results.json``, the ``eval`` records of ``metrics.jsonl``) are the **primary** case's
metrics at the top level (the first test set under the first condition: what ``checkpoint.best`` reads unless
``checkpoint.best_on`` names another case, what older tools read), ``eval_seconds`` there is the whole evaluation's
time, and ``cases`` maps every case name (the primary one included) to its own metrics (without timings).

Datasets are loaded before any model is built (:func:`open_datasets`), so a test set missing under its root stops a
training run with one line naming the dataset and the folders looked in, before the first step.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from esreid.config import DatasetEntry, case_name
from esreid.config.occlusion import Condition, parse_condition
from esreid.data.base import DatasetError, ReIDDataset, build_dataset
from esreid.engine.evaluator import EvalFeatures, evaluate_features, extract_items
from esreid.evaluation.metric_keys import is_number, reported


@dataclass
class TestSet:
    """A test dataset: its config entry (``key``, ``protocol_args``) and the loaded dataset."""

    __test__ = False  # not a pytest test class
    entry: DatasetEntry
    dataset: ReIDDataset

    @property
    def key(self) -> str:
        return self.entry.key


@dataclass
class TestCase:
    __test__ = False
    test_set: TestSet
    condition: Condition

    @property
    def name(self) -> str:
        return case_name(self.test_set.key, self.condition.name)


@dataclass
class CaseResult:
    """One evaluated case: its features (query: under the case's condition) and the protocol's metrics."""

    case: TestCase
    features: EvalFeatures
    metrics: Dict[str, Any]


def _identity(entry: DatasetEntry) -> Tuple[str, str, str]:
    return entry.name, entry.root, json.dumps(entry.args, sort_keys=True, default=str)


def _load(entry: DatasetEntry, loaded: Dict[Tuple[str, str, str], ReIDDataset], role: str = "") -> ReIDDataset:
    """The dataset of ``entry`` (read once per name, root and args); a problem names the ``role`` (e.g. "test set")
    when given."""
    key = _identity(entry)
    if key not in loaded:
        try:
            loaded[key] = build_dataset(entry.name, entry.root, verbose=False, **entry.args)
        except DatasetError as e:
            if not role:
                raise
            raise DatasetError(f"{role} {entry.key!r}: {e}") from None
    return loaded[key]


@dataclass
class RunDatasets:
    """What a run reads: ``train`` (one dataset, or a :class:`~esreid.data.multi.CombinedTrainSet` of
    ``train_parts``; None when only evaluating) and the ``test_sets`` in config order."""

    train: Optional[ReIDDataset]
    train_parts: List[ReIDDataset]
    test_sets: List[TestSet]

    def summary(self) -> str:
        """The dataset tables: the training data (each part and the total) and each test set not trained on."""
        trained = {id(d) for d in self.train_parts}
        tables = [self.train.summary()] if self.train is not None else []
        tables += [f"test set {t.key}:\n{t.dataset.summary()}" for t in self.test_sets if id(t.dataset) not in trained]
        return "\n".join(tables)


def open_datasets(cfg: Any, train: bool = True) -> RunDatasets:
    """Load the training datasets (``cfg.train_sets()``, unless ``train`` is False) and the test sets
    (``cfg.test_sets()``); a dataset listed in both is read once. Raises :class:`DatasetError` (a test set's names
    the test set)."""
    from esreid.data.multi import CombinedTrainSet

    loaded: Dict[Tuple[str, str, str], ReIDDataset] = {}
    parts = [(e.key, _load(e, loaded)) for e in cfg.train_sets()] if train else []
    train_set = (parts[0][1] if len(parts) == 1 else CombinedTrainSet(parts)) if parts else None
    tests = [TestSet(e, _load(e, loaded, "test set")) for e in cfg.test_sets()]
    return RunDatasets(train_set, [d for _, d in parts], tests)


def build_cases(cfg: Any, test_sets: Sequence[TestSet]) -> List[TestCase]:
    """Per test set, per ``test.occlusion`` condition, in that order (the first is the primary case)."""
    conditions = [parse_condition(c) for c in cfg.test.occlusion]
    return [TestCase(t, c) for t in test_sets for c in conditions]


def evaluate_cases(model: torch.nn.Module, cases: Sequence[TestCase], cfg: Any, device: torch.device,
                   on_case: Optional[Callable[[CaseResult], None]] = None) -> List[CaseResult]:
    """Extract features and run each case's protocol (module docstring); ``on_case`` sees each result as it comes."""
    galleries: Dict[int, Tuple[Tuple[torch.Tensor, ...], float]] = {}
    results = []
    for case in cases:
        dataset = case.test_set.dataset
        if id(dataset) not in galleries:
            start = time.perf_counter()
            gallery = extract_items(model, dataset.gallery, cfg, device, f"{case.test_set.key} gallery features")
            galleries[id(dataset)] = gallery, time.perf_counter() - start
        gallery, gallery_seconds = galleries[id(dataset)]
        start = time.perf_counter()
        query = extract_items(model, dataset.query, cfg, device, f"{case.name} query features", case.condition)
        features = EvalFeatures(query, gallery, gallery_seconds + time.perf_counter() - start)
        metrics = evaluate_features(features, dataset, cfg, model.retrieval.metric,
                                    protocol_args=case.test_set.entry.protocol_args)
        results.append(CaseResult(case, features, metrics))
        if on_case is not None:
            on_case(results[-1])
    return results


def combine_metrics(results: Sequence[CaseResult], seconds: float) -> Dict[str, Any]:
    """The metrics of an evaluation (module docstring): the primary case's at the top level, ``eval_seconds`` =
    ``seconds`` (the whole evaluation: the only timing, so two evaluations compare equal without it), and ``cases``:
    name -> metrics."""
    cases = {r.case.name: {k: v for k, v in r.metrics.items() if k != "eval_seconds"} for r in results}
    return {**results[0].metrics, "eval_seconds": seconds, "cases": cases}


def case_metrics(metrics: Mapping[str, Any]) -> Dict[str, Mapping[str, Any]]:
    """Case name -> metrics of an evaluation's metrics; ``{"": metrics}`` for metrics written before test cases."""
    return dict(metrics["cases"]) if isinstance(metrics.get("cases"), dict) else {"": metrics}


def evaluate_run(model: torch.nn.Module, cases: Sequence[TestCase], cfg: Any, device: torch.device,
                 on_case: Optional[Callable[[CaseResult], None]] = None) -> Tuple[Dict[str, Any], List[CaseResult]]:
    """:func:`evaluate_cases` and :func:`combine_metrics`: ``(metrics, results)``."""
    start = time.perf_counter()
    results = evaluate_cases(model, cases, cfg, device, on_case)
    return combine_metrics(results, time.perf_counter() - start), results


def reliance(results: Sequence[CaseResult]) -> Dict[str, Dict[str, float]]:
    """mAP points lost under each occlusion condition: test set -> condition -> ``100 (mAP(none) - mAP(condition))``,
    for the test sets evaluated under ``none`` as well (the reliance figure of the report)."""
    clear = {r.case.test_set.key: r.metrics["mAP"] for r in results if not r.case.condition.occludes}
    out: Dict[str, Dict[str, float]] = {}
    for r in results:
        key = r.case.test_set.key
        if r.case.condition.occludes and key in clear:
            out.setdefault(key, {})[r.case.condition.name] = 100 * (clear[key] - r.metrics["mAP"])
    return out


def cases_csv(results: Sequence[CaseResult]) -> str:
    """One row per test case: ``case, test_set, dataset, protocol, condition`` and a column per metric the cases'
    protocols declare (:mod:`esreid.evaluation.metric_keys`, as fractions; empty where a case's protocol does not
    report one)."""
    import csv
    import io

    columns = list(dict.fromkeys(m.key for r in results for m in reported(r.metrics)))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", "test_set", "dataset", "protocol", "condition", *columns])
    for r in results:
        t = r.case.test_set
        values = [r.metrics.get(k) for k in columns]
        writer.writerow([r.case.name, t.key, t.entry.name, t.dataset.protocol, r.case.condition.name,
                         *(f"{v:.6f}" if is_number(v) else "" for v in values)])
    return buf.getvalue()
