"""What a protocol reports: every registered protocol declares its metrics (``metrics=`` of its registration, a
:class:`MetricKeys`), and everything that names a metric reads that declaration: the ``checkpoint.best`` check, the
console line, the report's table and curves, ablation tables, ``model_best.pth``'s direction.

A metric computed from per-query statistics is one :class:`MetricKey` with ``per_query``: the protocols report the
mean over the valid queries of every such key without further code, so adding one is one declaration.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from esreid.registry import RegistryRef

RANK = "{k}"  # in a key or label: one metric per rank k of test.ranks (R{k} -> R1, R5, ...)
DEFAULT_PROTOCOL = "market"  # of records written before results named their protocol


@dataclass(frozen=True)
class MetricKey:
    """One number of a protocol's results: ``key`` (in results.json and metrics.jsonl), ``label`` (tables, plots),
    ``higher_is_better``, shown as a percentage with one decimal when ``percent`` (values are fractions), drawn in
    the report's evaluation curves when ``curve``. ``per_query(stats)`` (a :class:`~esreid.evaluation.metrics.
    QueryStats` of the valid queries -> one value per query) makes the protocol report the mean; None: the
    protocol computes it itself."""

    key: str
    label: str
    higher_is_better: bool = True
    percent: bool = True
    curve: bool = False
    per_query: Optional[Callable[[Any], np.ndarray]] = None

    def at(self, k: int) -> MetricKey:
        """The metric at rank ``k`` of a ranked key (``R{k}``); only rank 1 of a ranked key is drawn as a curve."""
        return dataclasses.replace(self, key=self.key.replace(RANK, str(k)), label=self.label.replace(RANK, str(k)),
                                   curve=self.curve and k == 1)

    def show(self, value: float, std: Optional[float] = None) -> str:
        """``"62.1"`` (a percentage) or ``"0.621"``, with ``"±std"`` when given."""
        text = (lambda v: f"{100 * v:.1f}") if self.percent else (lambda v: f"{v:.3g}")
        return text(value) + (f"±{text(std)}" if std is not None else "")

    def improves(self, value: float, best: float) -> bool:
        return value > best if self.higher_is_better else value < best

    @property
    def worst(self) -> float:
        return -math.inf if self.higher_is_better else math.inf


@dataclass(frozen=True)
class MetricKeys:
    """A protocol's declared metrics, in display order; keys with ``{k}`` stand for one metric per rank."""

    keys: Tuple[MetricKey, ...]

    def expand(self, ranks: Sequence[int]) -> List[MetricKey]:
        """The concrete metrics of an evaluation at ``ranks`` (``test.ranks``)."""
        return [c for m in self.keys for c in ([m.at(k) for k in ranks] if RANK in m.key else [m])]

    def present(self, metrics: Mapping[str, Any]) -> List[MetricKey]:
        """The declared metrics that ``metrics`` (one evaluation's results) holds, ranks as found (a value may be NaN:
        a table shows it as missing, the console line leaves it out)."""
        out = []
        for m in self.keys:
            if RANK in m.key:
                pattern = re.compile(re.escape(m.key).replace(re.escape(RANK), r"(\d+)"))
                ranks = sorted(int(g.group(1)) for key in metrics if (g := pattern.fullmatch(key)))
                out += [m.at(k) for k in ranks]
            else:
                out.append(m)
        return [m for m in out if m.key in metrics]

    def per_query_means(self, stats: Any) -> Dict[str, float]:
        """``{key: mean over the queries of stats}`` for every declared key with ``per_query``."""
        return {m.key: float(np.mean(m.per_query(stats))) for m in self.keys if m.per_query is not None}


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


PROTOCOLS = RegistryRef("esreid.evaluation.protocols:PROTOCOLS")


def declared(protocol: str) -> MetricKeys:
    """The metrics protocol ``protocol`` declares."""
    return PROTOCOLS.meta(protocol)["metrics"]


def reported(metrics: Mapping[str, Any]) -> List[MetricKey]:
    """The declared metrics an evaluation's results (a results.json, an ``eval`` record) hold, in display order; the
    protocol is the one the results name (``"protocol"``)."""
    return declared(metrics.get("protocol", DEFAULT_PROTOCOL)).present(metrics)


def format_metrics(metrics: Mapping[str, Any], title: str = "") -> str:
    """One line: every reported metric as ``key value`` (std where the protocol reports one)."""
    parts = [f"{m.key} {m.show(metrics[m.key], metrics.get(f'{m.key}_std'))}" for m in reported(metrics)
             if is_number(metrics[m.key])]
    return f"{title}: " + "  ".join(parts) if title else "  ".join(parts)
