"""Plots of a run: CMC curves and training curves from ``metrics.jsonl`` (matplotlib ``Figure`` on an Agg canvas).

Two steps, so what is drawn can be checked without reading pixels: ``*_panels`` functions turn records into
:class:`Panel` data (series of numbers, titles, axis labels; an empty panel is never made), and :func:`plot_panels`
draws any list of panels into one PNG. ``metrics.jsonl`` records (written by the trainer):

- ``train`` (every ``log_period`` iterations): ``epoch``, ``iter``, ``lr``, the loss terms (``aib_ce``, ``esb_triplet``,
  ``global_ce``, ``s1_ce``, ...), their sum ``loss`` and, with ``diagnostics.erased_loss``, ``erased_loss``;
- ``epoch``: ``epoch``, ``epochs``, ``seconds``, ``images_per_second``, ``data_seconds``, ``eta_seconds``,
  ``peak_memory_mb``, ``lr``, mean loss terms and the model's ``stats()``
  (pooling exponents ``esb_l`` / ``pool_p``, ``erased_fraction``, ``saliency_mean``, ``empty_map_fraction``);
- ``eval``: ``epoch``, ``mAP``, ``R1``, ``R5``, ... (fractions in [0, 1]).

Every key is optional: panels are made only for the values present.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from esreid.evaluation.metric_keys import reported
from esreid.viz.images import figure_png

Record = Mapping[str, Any]

# keys of train/epoch records that are not loss terms (bookkeeping, totals, diagnostics, model stats)
BOOKKEEPING = frozenset({"type", "epoch", "epochs", "iter", "seconds", "images_per_second", "data_seconds",
                         "eta_seconds", "peak_memory_mb", "lr", "loss", "erased_loss"})
BESM_STATS = {"erased_fraction": ("BESM: fraction of the batch erased", "fraction"),
              "saliency_mean": ("BESM: mean CG-RAM value", "mean map value"),
              "empty_map_fraction": ("BESM: fraction drawn with an all-zero map (not erased)", "fraction")}
EXPONENT_SYMBOLS = ("l", "p")  # model.stats() names a pooling exponent <where>_<symbol>: esb_l (P-pooling), pool_p
CMC_MARKS = (1, 5, 10, 20)  # ranks marked on CMC curves


@dataclass
class Series:
    """One line: ``y`` against ``x`` (equal lengths, at least one point)."""

    label: str
    x: List[float]
    y: List[float]


@dataclass
class Panel:
    """One axes. ``key`` is a stable name (``loss/aib``, ``loss/total``, ``lr``, ``exponent``, ``erased_fraction``,
    ``saliency_mean``, ``eval``, ``erased_loss``, ``cmc``) for callers that want a subset."""

    key: str
    title: str
    xlabel: str
    ylabel: str
    series: List[Series] = field(default_factory=list)
    marker: str = ""
    mark_x: Tuple[float, ...] = ()  # x values to put markers at (every point when ``marker`` is set and this is empty)
    ylim: Optional[Tuple[float, float]] = None
    smooth: bool = False  # long noisy series (single-batch losses) drawn faintly under their moving average


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_exponent(key: str) -> bool:
    """A pooling exponent logged from ``model.stats()``: ``<branch>_l`` (P-pooling) or ``<branch>_p`` (GeM)."""
    return "_" in key and key.rsplit("_", 1)[1] in EXPONENT_SYMBOLS


def is_loss_term(key: str) -> bool:
    return key not in BOOKKEEPING and key not in BESM_STATS and not is_exponent(key)


def branch_of(term: str) -> str:
    """The branch of a loss term: its name before the last ``_`` (``aib_ce`` -> ``aib``, ``s1_erased_ce`` ->
    ``s1_erased``); ``""`` for an unprefixed term (the baseline's ``ce``)."""
    return term.rsplit("_", 1)[0] if "_" in term else ""


def group_loss_terms(keys: Iterable[str]) -> Dict[str, List[str]]:
    """Loss terms among ``keys`` grouped by :func:`branch_of`, groups and terms in first-seen order."""
    groups: Dict[str, List[str]] = {}
    for key in keys:
        if is_loss_term(key) and key not in groups.get(branch_of(key), []):
            groups.setdefault(branch_of(key), []).append(key)
    return groups


def _series(records: Sequence[Record], xkey: str, ykey: str, label: str = "", scale: float = 1.0) -> List[Series]:
    """``[Series]`` of ``ykey`` against ``xkey`` over the records holding both as finite numbers; ``[]`` when none."""
    pts = [(float(r[xkey]), scale * float(r[ykey])) for r in records if _number(r.get(xkey)) and _number(r.get(ykey))]
    return [Series(label or ykey, [p[0] for p in pts], [p[1] for p in pts])] if pts else []


def _by_type(records: Sequence[Record], kind: str) -> List[Record]:
    return [r for r in records if r.get("type") == kind]


def _source(records: Sequence[Record], key: str) -> Tuple[List[Record], str]:
    """Where a per-step value is read: the ``train`` records (x = iteration) if any holds it, else the ``epoch``
    records (x = epoch; the run logged no train records, e.g. ``log_period: 0``)."""
    train = _by_type(records, "train")
    if any(_number(r.get(key)) for r in train):
        return train, "iter"
    return _by_type(records, "epoch"), "epoch"


def _keys(records: Sequence[Record]) -> List[str]:
    seen: Dict[str, None] = {}
    for r in records:
        if r.get("type") in ("train", "epoch"):
            seen.update((k, None) for k, v in r.items() if _number(v))
    return list(seen)


def training_panels(records: Sequence[Record]) -> List[Panel]:
    """Panels for the records of one run (see the module docstring), in this order: one per branch of loss terms,
    the total loss, the learning rate, the pooling exponents, BESM's erased fraction and mean saliency, mAP/R1 per
    evaluation (in %), and ES-Net Fig. 3 (loss on BESM-erased copies against the loss on the originals)."""
    xlabels = {"iter": "iteration", "epoch": "epoch"}
    panels: List[Panel] = []

    def per_step(key: str, title: str, ylabel: str, names: Sequence[Tuple[str, str]], smooth: bool = True) -> None:
        """A panel of per-step values (``names``: (record key, legend label)), made when the first one exists."""
        src, x = _source(records, names[0][0])
        series = [s for name, label in names for s in _series(src, x, name, label)]
        if series and series[0].label == names[0][1]:
            panels.append(Panel(key, title, xlabels[x], ylabel, series, smooth=smooth))

    keys = _keys(records)
    for branch, terms in group_loss_terms(keys).items():
        per_step(f"loss/{branch or 'terms'}", f"{branch} loss terms" if branch else "loss terms", "loss",
                 [(t, t) for t in terms])
    per_step("loss/total", "total loss", "loss", [("loss", "loss")])
    per_step("lr", "learning rate", "lr", [("lr", "lr")], smooth=False)
    epochs = _by_type(records, "epoch")
    exps = [s for k in keys if is_exponent(k) for s in _series(epochs, "epoch", k)]
    if exps:
        panels.append(Panel("exponent", "pooling exponent (P-pooling l, GeM p)", "epoch", "exponent", exps))
    for key, (title, ylabel) in BESM_STATS.items():
        series = _series(epochs, "epoch", key)
        if series:
            panels.append(Panel(key, title, "epoch", ylabel, series))
    eval_records = _by_type(records, "eval")
    curves = [m for m in reported(eval_records[-1]) if m.curve] if eval_records else []  # as the protocol declares
    evals = [s for m in curves for s in _series(eval_records, "epoch", m.key, m.label, 100.0 if m.percent else 1.0)]
    if evals:
        panels.append(Panel("eval", "evaluation", "epoch", "%", evals, marker="o"))
    per_step("erased_loss", "Fig. 3: loss on erased vs original images", "loss",
             [("erased_loss", "BESM-erased copies"), ("loss", "original images")])
    return panels


def cmc_panel(curves: Mapping[str, Sequence[float]], max_rank: int = 50) -> Optional[Panel]:
    """A CMC panel: ``curves`` maps a model name to its CMC (fractions at ranks 1, 2, ...; the first ``max_rank``
    are drawn, in %). The legend gives R1/R5/R10. ``None`` when no curve has a value."""
    series = []
    for name, cmc in curves.items():
        ys = [100.0 * float(v) for v in list(cmc)[:max_rank]]
        if not ys:
            continue
        marks = ", ".join(f"R{r} {ys[r - 1]:.1f}" for r in CMC_MARKS[:3] if r <= len(ys))
        series.append(Series(f"{name} ({marks})", list(range(1, len(ys) + 1)), ys))
    if not series:
        return None
    low = min(min(s.y) for s in series)
    return Panel("cmc", "CMC", "rank", "matching rate (%)", series, marker="o", mark_x=CMC_MARKS,
                 ylim=(max(0.0, 10 * math.floor(low / 10) - 2), 101.0))


PANEL_SIZE = (4.6, 3.0)  # inches per panel
CMC_SIZE = (6.4, 4.2)
SMOOTH_FROM = 50  # points: shorter series are drawn as they are
SMOOTH_WINDOWS = 40  # a smoothed series averages over len/SMOOTH_WINDOWS points


def moving_average(y: Sequence[float], window: int) -> List[float]:
    """Centred moving average over ``window`` points (shrinking at the ends), same length as ``y``."""
    import numpy as np

    a = np.asarray(y, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(a)])
    i = np.arange(len(a))
    lo, hi = np.maximum(0, i - window // 2), np.minimum(len(a), i + window - window // 2)
    return list((c[hi] - c[lo]) / (hi - lo))



def plot_panels(panels: Sequence[Optional[Panel]], columns: int = 3, panel_size: Tuple[float, float] = PANEL_SIZE,
                dpi: int = 100) -> Optional[bytes]:
    """Draw ``panels`` (``None`` entries skipped) on a grid of ``columns`` (fewer when there are fewer panels),
    ``panel_size`` inches each, into PNG bytes; ``None`` when there is no panel."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [p for p in panels if p is not None and p.series]
    if not panels:
        return None
    cols = min(columns, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), layout="constrained")
    for i, p in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for s in p.series:
            every = [j for j, x in enumerate(s.x) if x in p.mark_x] if p.mark_x else None
            y = s.y
            if p.smooth and len(y) >= SMOOTH_FROM:
                raw = ax.plot(s.x, y, linewidth=0.6, alpha=0.25)[0]
                y = moving_average(y, len(y) // SMOOTH_WINDOWS)
                ax.plot(s.x, y, label=s.label, linewidth=1.2, color=raw.get_color())
                continue
            ax.plot(s.x, y, label=s.label, linewidth=1.2, marker=p.marker or ("o" if len(y) == 1 else ""),
                    markersize=4, markevery=every)
        ax.set_title(p.title, fontsize=10)
        ax.set_xlabel(p.xlabel, fontsize=9)
        ax.set_ylabel(p.ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        xs = {x for s in p.series for x in s.x}
        if len(xs) == 1:  # one evaluation so far: whole-number ticks around it, not 0.96 ... 1.04
            ax.set_xlim(min(xs) - 1, min(xs) + 1)
        if p.ylim:
            ax.set_ylim(*p.ylim)
        ax.grid(True, alpha=0.3)
        if len(p.series) > 1 or p.key == "cmc":
            ax.legend(fontsize=8, frameon=False, loc="lower right" if p.key == "cmc" else "best")
    return figure_png(fig, dpi=dpi)


def plot_training(records: Sequence[Record], columns: int = 3) -> Optional[bytes]:
    """PNG of :func:`training_panels` for one run's records; ``None`` when they hold nothing to plot."""
    return plot_panels(training_panels(records), columns=columns)


def plot_cmc(curves: Mapping[str, Sequence[float]], max_rank: int = 50) -> Optional[bytes]:
    """PNG of the CMC curves of one or several models on one axes (:func:`cmc_panel`); ``None`` when empty."""
    return plot_panels([cmc_panel(curves, max_rank)], columns=1, panel_size=CMC_SIZE)
