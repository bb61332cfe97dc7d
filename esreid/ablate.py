"""`esreid ablate`: configs x seeds, trained and evaluated one after the other, summarised in the paper's layout.

What runs (any combination):

* ``--table III [V ...]``: the rows of the ES-Net paper's tables that have a config (:mod:`esreid.paper`,
  docs/methods.md §1.8), on the datasets of ``--dataset`` (default: every column of the table);
* ``--sweep NAME|SPEC``: a figure as a sweep spec (``configs/sweeps/<NAME>.yaml``: series of configs x points that
  set config keys; Fig. 4, Fig. 6), plotted;
* ``--configs A.yaml B.yaml``: any configs, one row each.

Each (config, dataset, overrides) x seed is a **cell**, trained by the normal :class:`~esreid.engine.trainer.Trainer`
into its own folder ``<out>/<dataset>/<config>[@<point>]/seed<k>``. Cells whose resolved configs are identical (a
row shared by two tables, a sweep point that equals a table row) are one cell. The run is resumable: a cell with
``results.json`` is done and skipped, a cell with ``last.pth`` resumes from it, and a cell folder written with
another config stops the command before anything runs. Outputs beside the cells: ``table_<T>.md`` / ``.csv`` (mean ±
sample std over the seeds per metric, the paper's figure beside each cell), ``sweep_<NAME>.md`` / ``.csv`` / ``.png``.

``--dataset synthetic`` runs the person tables (and sweeps) on the built-in synthetic people at demo scale: the
configs of the table's first dataset with :func:`esreid.demo.demo_overrides` (tiny ResNet, 64x32, 64 train ids,
8 epochs; a non-local backbone becomes ``resnet_tiny_nl``), so each cell takes seconds on a CPU. Command-line
``KEY=VALUE`` overrides apply to every cell, last.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from esreid.config import Config, ConfigError, load_config, read_yaml_file, to_dict
from esreid.engine.hooks import case_value, format_cases
from esreid.engine.resume import flatten, under
from esreid.errors import EsreidError
from esreid.files import atomic_write
from esreid.paper import PAPER_METRICS, TABLES, Column, Row, Table

SYNTHETIC = "synthetic"
TINY_BACKBONES = {"resnet50_nl": "resnet_tiny_nl"}  # demo scale: backbone -> its tiny stand-in (default resnet_tiny)
INDEX = "cells.json"  # <out>/cells.json: hash of each cell's config -> its folder, shared by every command on <out>
# keys (or whole sections) that change how a cell runs, not what it computes: a finished or interrupted cell is
# reused across them
RUN_KEYS = ("device", "log_period", "tensorboard", "data.workers", "data.cache", "data.cache_dir",
            "data.test_batch_size", "test.eval_period", "threads", "checkpoint")
Log = Callable[[str], None]


class AblateError(EsreidError):
    """A problem with the cells of an ablation (a folder holding another run, a missing config)."""


# ----------------------------------------------------------------------------------------------------------------
# Sweeps
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    x: float  # the plotted value
    overrides: Tuple[str, ...]  # "key=value" for each key the point sets
    name: str  # "<key>=<value>,...": the cell folder suffix


@dataclass(frozen=True)
class Sweep:
    """A figure: ``series`` (label, config stem) x ``points``, plotted as ``metrics[0]`` against ``x``."""

    name: str
    title: str
    folder: str
    metrics: Tuple[str, ...]
    x_label: str
    series: Tuple[Tuple[str, str], ...]
    points: Tuple[Point, ...]


def load_sweep(name: str, config_root: str) -> Sweep:
    """The sweep spec ``name`` (``<config_root>/sweeps/<name>.yaml``) or the spec file ``name``; raises ConfigError
    naming the file and key for a malformed spec."""
    path = name if name.endswith((".yaml", ".yml")) else os.path.join(config_root, "sweeps", f"{name}.yaml")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(os.path.join(config_root, "sweeps")) if f.endswith(".yaml")) \
            if os.path.isdir(os.path.join(config_root, "sweeps")) else []
        raise ConfigError(f"sweep spec not found: {path} (known sweeps: {', '.join(known) or 'none'}; give a name "
                          "under <config-root>/sweeps or a .yaml path)")
    spec = read_yaml_file(path)

    def need(cond: bool, key: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"{path}: key '{key}': expected {what}")

    need(isinstance(spec, dict), "<top>", "a mapping with title, folder, metrics, x_label, series, points")
    for key in ("title", "folder", "x_label"):
        need(isinstance(spec.get(key), str) and spec[key], key, "a non-empty string")
    metrics = spec.get("metrics")
    need(isinstance(metrics, list) and metrics and all(isinstance(m, str) for m in metrics), "metrics",
         "a non-empty list of metric names (mAP, R1, ...)")
    series = spec.get("series")
    need(isinstance(series, list) and series, "series", "a non-empty list of {label, config}")
    for i, s in enumerate(series):
        need(isinstance(s, dict) and set(s) == {"label", "config"} and all(isinstance(v, str) for v in s.values()),
             f"series[{i}]", "{label: <text>, config: <config file stem>}")
    points = spec.get("points")
    need(isinstance(points, list) and points, "points", "a non-empty list of {x, set}")
    parsed = []
    for i, p in enumerate(points):
        ok = isinstance(p, dict) and set(p) == {"x", "set"} and isinstance(p["set"], dict) and p["set"]
        need(ok and isinstance(p["x"], (int, float)) and not isinstance(p["x"], bool), f"points[{i}]",
             "{x: <number>, set: {<config key>: <value>, ...}}")
        sets = tuple(f"{k}={json.dumps(v)}" for k, v in p["set"].items())
        parsed.append(Point(float(p["x"]), sets, ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in p["set"].items())))
    unknown = sorted(set(spec) - {"title", "folder", "metrics", "x_label", "series", "points"})
    need(not unknown, unknown[0] if unknown else "", "no such key (title, folder, metrics, x_label, series, points)")
    stem = os.path.splitext(os.path.basename(path))[0]
    return Sweep(stem, spec["title"], spec["folder"], tuple(metrics), spec["x_label"],
                 tuple((s["label"], s["config"]) for s in series), tuple(parsed))


# ----------------------------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One training run: ``config`` with ``overrides`` (the last ones set output_dir and seed) into ``folder``."""

    config: str
    overrides: Tuple[str, ...]
    folder: str
    seed: int


def _comparable(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """A config's keys that define what a cell computes (no output_dir, seed or :data:`RUN_KEYS`)."""
    return {k: v for k, v in flatten(cfg).items()
            if under(k, RUN_KEYS) is None and k not in ("output_dir", "seed")}


class Plan:
    """The cells of a command, planned (every config loaded and checked) before anything runs.

    ``scale``: overrides applied after each column's (``--dataset synthetic``: the demo scale); ``user``: the
    command line's, applied last. :meth:`cells` returns one cell per seed and dedupes identical configs.
    """

    def __init__(self, out: str, seeds: Sequence[int], config_root: str, scale: Sequence[str], user: Sequence[str]):
        self.out, self.seeds, self.config_root = os.path.abspath(out), list(seeds), config_root
        self.scale, self.user = list(scale), list(user)
        self.index = os.path.join(self.out, INDEX)
        self.by_key: Dict[str, str] = {}  # hash of the comparable config -> cell folder stem (INDEX, across runs)
        if os.path.isfile(self.index):
            try:
                with open(self.index, encoding="utf-8") as f:
                    self.by_key = dict(json.load(f))
            except (ValueError, TypeError):
                raise AblateError(f"{self.index} is not a cell index (JSON object): delete it; it is rebuilt from "
                                  "the configs, and cell folders of other configs are then reported") from None
        self.all: Dict[str, Cell] = {}  # folder -> cell, in planning order

    def config_path(self, folder: str, stem: str) -> str:
        path = os.path.join(self.config_root, folder, f"{stem}.yaml")
        if not os.path.isfile(path):
            raise ConfigError(f"config not found: {path} (the row's config for the dataset {folder!r}; "
                              f"--config-root is {self.config_root!r})")
        return path

    def cells(self, column: str, path: str, label: str, extra: Sequence[str] = (), point: str = "",
              column_overrides: Sequence[str] = ()) -> List[Cell]:
        """The cells (one per seed) of ``path`` on ``column`` with ``extra`` overrides (a sweep point named
        ``point``)."""
        scale = list(self.scale)
        if scale:  # demo scale: the tiny trunk of the config's kind (AGW's non-local blocks stay)
            own = load_config(path, list(column_overrides)).model.backbone
            scale.append(f"model.backbone={TINY_BACKBONES.get(own, 'resnet_tiny')}")
        base = [*column_overrides, *scale, *extra, *self.user]
        cfg = load_config(path, base)  # every mistake surfaces here, before anything runs
        key = hashlib.sha256(json.dumps(_comparable(to_dict(cfg)), sort_keys=True, default=str).encode()).hexdigest()
        stem = self.by_key.setdefault(key, os.path.join(column, label + (f"@{point}" if point else "")))
        out = []
        for seed in self.seeds:
            folder = os.path.join(self.out, stem, f"seed{seed}")
            cell = Cell(path, (*base, f"output_dir={folder}", f"seed={seed}"), folder, seed)
            self.all.setdefault(folder, cell)
            out.append(self.all[folder])
        return out

    def check_folders(self) -> None:
        """Every existing cell folder must hold a run of the same config (raises AblateError naming the keys); then
        the index of cells is saved, so later commands on ``out`` find the same cells for the same configs."""
        for cell in self.all.values():
            saved = os.path.join(cell.folder, "config.yaml")
            if not os.path.isfile(saved):
                continue
            old = _comparable(read_yaml_file(saved) or {})
            new = _comparable(to_dict(load_config(cell.config, list(cell.overrides))))
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff:
                raise AblateError(f"{cell.folder} holds a run of another config (differs in {', '.join(diff[:5])}); "
                                  "choose another --out, or delete that folder to retrain it")
        atomic_write(self.index, json.dumps(self.by_key, indent=1, sort_keys=True))


def cell_config(cell: Cell) -> Config:
    return load_config(cell.config, list(cell.overrides))


def run_cell(cell: Cell, progress: bool = False, log: Log = print) -> Dict[str, Any]:
    """Train and evaluate one cell (or read its ``results.json``; resume from its ``last.pth``); its metrics."""
    from esreid.engine.runlock import run_lock
    from esreid.engine.trainer import Trainer

    results = os.path.join(cell.folder, "results.json")
    if os.path.isfile(results):
        with open(results, encoding="utf-8") as f:
            return json.load(f)
    cfg = cell_config(cell)
    with run_lock(cell.folder):  # one training process per cell (esreid.engine.runlock)
        resume = "auto" if os.path.isfile(os.path.join(cell.folder, "last.pth")) else None
        trainer = Trainer(cfg, resume=resume, progress=progress, log=log)
        if trainer.start_epoch >= cfg.solver.epochs:  # interrupted during the final evaluation: evaluate again
            metrics, _ = trainer.evaluate()
            atomic_write(results, json.dumps(metrics, indent=2))
            return metrics
        return trainer.train()


def run_all(plan: Plan, progress: bool = False, verbose: bool = False, log: Log = print) -> Dict[str, Dict]:
    """Run every planned cell in order; ``{folder: metrics}``. Ctrl-C keeps what is done (rerun to continue)."""
    out: Dict[str, Dict] = {}
    cells = list(plan.all.values())
    for i, cell in enumerate(cells, 1):
        done = os.path.isfile(os.path.join(cell.folder, "results.json"))
        resumed = not done and os.path.isfile(os.path.join(cell.folder, "last.pth"))
        state = "done" if done else "resuming" if resumed else "training"
        log(f"[{i}/{len(cells)}] {os.path.relpath(cell.folder, plan.out)}: {state}")
        start = time.perf_counter()
        try:
            out[cell.folder] = run_cell(cell, progress, log if verbose else (lambda line: None))
        except KeyboardInterrupt as e:
            e.hint = ("finished cells are kept and the interrupted one resumes from its last.pth: rerun the same "  # type: ignore[attr-defined]
                      "esreid ablate command")
            raise
        if not done:
            lines = format_cases(out[cell.folder])
            lines[-1] += f"  ({time.perf_counter() - start:.0f} s)"
            for line in lines:
                log(f"    {line}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    """A metric over seeds, in percent: mean, sample standard deviation (None for one seed), count."""

    mean: float
    std: Optional[float]
    n: int

    def text(self) -> str:
        return f"{self.mean:.1f}" + (f" ± {self.std:.1f}" if self.std is not None else "")


def stat(values: Sequence[float]) -> Optional[Stat]:
    vals = [100 * v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return None
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


@dataclass
class TableResult:
    """A table's rows with the cells that ran for each (column key -> cells), ready to format."""

    table: Table
    columns: Tuple[Column, ...]
    cells: Dict[Tuple[str, str], List[Cell]]  # (row label, column key) -> cells
    paper: bool  # whether the paper's figures apply (False on synthetic data)

    def stat(self, metrics: Dict[str, Dict], row: Row, column: Column, metric: str, case: str = "") -> Optional[Stat]:
        """``metric`` over the seeds of a cell, of its primary test case (``case`` ""; the flat metrics) or of the
        test case ``case``."""
        cells = self.cells.get((row.label, column.key), [])
        return stat([case_value(metrics[c.folder], case, metric) for c in cells if c.folder in metrics])

    def groups(self, metrics: Dict[str, Dict]) -> List[str]:
        """The column groups: ``""`` (the primary test case) then every further test case of the cells (several
        test sets or occlusion conditions), in order of first appearance."""
        names: List[str] = [""]
        for cells in self.cells.values():
            for c in cells:
                for name in list((metrics.get(c.folder) or {}).get("cases") or {})[1:]:
                    if name not in names:
                        names.append(name)
        return names

    def paper_value(self, row: Row, column: Column, metric: str) -> Optional[float]:
        values = row.values.get(column.key) if self.paper else None
        return values[column.metrics.index(metric)] if values else None


def _seeds_text(seeds: Sequence[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def _group_title(column: Column, case: str) -> str:
    return f"{column.title} [{case}]" if case else column.title


def table_markdown(res: TableResult, metrics: Dict[str, Dict], seeds: Sequence[int]) -> str:
    """The table in the paper's layout: one row per paper row, ``mean ± std (paper X)`` per column and metric; a
    further column group per test case beyond the primary one (``<column> [<case>] <metric>``, no paper figure)."""
    t = res.table
    groups = res.groups(metrics)
    heads = [f"{_group_title(c, g)} {m}" for c in res.columns for g in groups for m in c.metrics]
    lines = [f"## Table {t.name}: {t.title}", "",
             f"esreid ablate, seeds {_seeds_text(seeds)}: mean ± sample std over seeds, in %"
             + ("; the paper's figure in brackets" if res.paper else "") + ".", "",
             "| method | config | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for row in t.rows:
        if not res.paper and row.config is None:
            continue  # a number quoted from another paper: nothing to run, nothing to compare on synthetic data
        cells = []
        for c in res.columns:
            for g in groups:
                for m in c.metrics:
                    s, p = res.stat(metrics, row, c, m, g), None if g else res.paper_value(row, c, m)
                    text = s.text() if s else "–"
                    cells.append(text + (f" ({p:.1f})" if p is not None else ""))
        config = f"`{row.config}`" if row.config else "(quoted)"
        lines.append(f"| {row.label} | {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(res: TableResult, metrics: Dict[str, Dict], seeds: Sequence[int]) -> str:
    """The table as CSV: ``method, config, seeds``, then per column, column group (test case, as in
    :func:`table_markdown`: ``<column>[<case>]``) and metric: mean, std, n, paper."""
    buf = io.StringIO()
    w = csv.writer(buf)
    head = ["method", "config", "seeds"]
    groups = res.groups(metrics)
    for c in res.columns:
        for g in groups:
            key = f"{c.key}[{g}]" if g else c.key
            for m in c.metrics:
                head += [f"{key} {m} mean", f"{key} {m} std", f"{key} {m} n", f"{key} {m} paper"]
    w.writerow(head)
    for row in res.table.rows:
        line: List[Any] = [row.label, row.config or "", " ".join(map(str, seeds))]
        for c in res.columns:
            for g in groups:
                for m in c.metrics:
                    s, p = res.stat(metrics, row, c, m, g), None if g else res.paper_value(row, c, m)
                    line += [f"{s.mean:.2f}" if s else "", f"{s.std:.2f}" if s and s.std is not None else "",
                             s.n if s else 0, "" if p is None else p]
        w.writerow(line)
    return buf.getvalue()


@dataclass
class SweepResult:
    sweep: Sweep
    column: Column
    cells: Dict[Tuple[str, float], List[Cell]]  # (series label, x) -> cells


def sweep_rows(res: SweepResult, metrics: Dict[str, Dict]) -> List[Tuple[str, float, Dict[str, Optional[Stat]]]]:
    """(series, x, {metric: Stat}) for every series and point."""
    out = []
    for (label, x), cells in res.cells.items():
        out.append((label, x, {m: stat([metrics[c.folder].get(m) for c in cells if c.folder in metrics])
                               for m in res.sweep.metrics}))
    return out


def sweep_outputs(res: SweepResult, metrics: Dict[str, Dict], seeds: Sequence[int]) -> Tuple[str, str, bytes]:
    """Markdown, CSV and the plot (PNG: the first metric's mean against x, one line per series)."""
    from esreid.viz.plots import Panel, Series, plot_panels

    s = res.sweep
    rows = sweep_rows(res, metrics)
    md = [f"## {s.title} ({res.column.title})", "",
          f"esreid ablate, seeds {_seeds_text(seeds)}: mean ± sample std over seeds, in %. The paper prints no "
          "values for its figures.", "",
          f"| series | {s.x_label} | " + " | ".join(s.metrics) + " |", "|---|---|" + "---|" * len(s.metrics)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["series", "x", *[f"{m} {k}" for m in s.metrics for k in ("mean", "std", "n")]])
    for label, x, stats in rows:
        md.append(f"| {label} | {x:g} | " + " | ".join(st.text() if st else "–" for st in stats.values()) + " |")
        w.writerow([label, f"{x:g}", *[v for st in stats.values() for v in (
            (f"{st.mean:.2f}", "" if st.std is None else f"{st.std:.2f}", st.n) if st else ("", "", 0))]])
    first = s.metrics[0]
    series = []
    for label, _ in s.series:
        pts = [(x, st[first].mean) for lab, x, st in rows if lab == label and st[first]]
        if pts:
            series.append(Series(label, [p[0] for p in pts], [p[1] for p in pts]))
    panel = Panel("sweep", f"{s.title} ({res.column.title}, {len(seeds)} seed(s))", s.x_label, f"{first} (%)",
                  series, marker="o")
    png = plot_panels([panel], columns=1, panel_size=(6.4, 4.2)) or b""
    return "\n".join(md) + "\n", buf.getvalue(), png


# ----------------------------------------------------------------------------------------------------------------
# Planning the command
# ----------------------------------------------------------------------------------------------------------------
def synthetic_column(folder: str, metrics: Sequence[str]) -> Column:
    return Column(SYNTHETIC, "Synthetic (demo scale)", folder, tuple(metrics))


def table_columns(table: Table, datasets: Sequence[str]) -> Tuple[Tuple[Column, ...], bool]:
    """The columns ``datasets`` selects (by folder; ``synthetic`` = the first column's configs at demo scale) and
    whether the paper's figures apply."""
    if not datasets:
        return table.columns, True
    if SYNTHETIC in datasets:
        first = table.columns[0]
        return (synthetic_column(first.folder, first.metrics),), False
    unknown = [d for d in datasets if d not in table.folders()]
    if unknown:
        raise ConfigError(f"Table {table.name} has no dataset {unknown[0]!r}; it has {', '.join(table.folders())} "
                          f"(or use {SYNTHETIC})")
    return tuple(c for c in table.columns if c.folder in datasets), True


def plan_table(plan: Plan, table: Table, datasets: Sequence[str]) -> TableResult:
    columns, paper = table_columns(table, datasets)
    cells: Dict[Tuple[str, str], List[Cell]] = {}
    for row in table.rows:
        if row.config is None:
            continue
        for c in columns:
            path = plan.config_path(c.folder, row.config)
            cells[(row.label, c.key)] = plan.cells(c.key, path, row.config, column_overrides=c.overrides)
    return TableResult(table, columns, cells, paper)


def plan_sweep(plan: Plan, sweep: Sweep, datasets: Sequence[str]) -> List[SweepResult]:
    folders = [sweep.folder] if not datasets else [d for d in datasets if d != SYNTHETIC]
    columns = [Column(f, f, f, sweep.metrics) for f in folders]
    if SYNTHETIC in datasets:
        columns = [synthetic_column(sweep.folder, sweep.metrics)]
    out = []
    for column in columns:
        cells: Dict[Tuple[str, float], List[Cell]] = {}
        for label, stem in sweep.series:
            path = plan.config_path(column.folder, stem)
            for p in sweep.points:
                cells[(label, p.x)] = plan.cells(column.key, path, stem, p.overrides, p.name)
        out.append(SweepResult(sweep, column, cells))
    return out


def plan_configs(plan: Plan, paths: Sequence[str], datasets: Sequence[str]) -> TableResult:
    """Arbitrary configs as one table: a row per config (``<folder>/<stem>``), one column."""
    synthetic = SYNTHETIC in datasets
    if datasets and not synthetic:
        raise ConfigError(f"--dataset with --configs: only {SYNTHETIC!r} applies (a config names its own dataset)")
    column = synthetic_column("", PAPER_METRICS) if synthetic else Column("run", "", "", PAPER_METRICS)
    rows, cells = [], {}
    for path in paths:
        label = os.path.join(os.path.basename(os.path.dirname(os.path.abspath(path))),
                             os.path.splitext(os.path.basename(path))[0])
        rows.append(Row(label, label, {}))
        cells[(label, column.key)] = plan.cells(column.key, path, label.replace(os.sep, "_"))
    return TableResult(Table("configs", "configs", (column,), tuple(rows)), (column,), cells, False)


def scale_overrides(datasets: Sequence[str], out: str) -> List[str]:
    """Demo-scale overrides for ``--dataset synthetic`` (data generated once under ``<out>/data``), else none."""
    if SYNTHETIC not in datasets:
        return []
    from esreid.demo import demo_overrides

    return demo_overrides(os.path.join(os.path.abspath(out), "data"), quick=True)


def _write(out: str, name: str, text: str) -> str:
    path = os.path.join(out, name)
    atomic_write(path, text)
    return path


def ablate(tables: Sequence[str] = (), sweeps: Sequence[str] = (), configs: Sequence[str] = (),
           datasets: Sequence[str] = (), seeds: Sequence[int] = (0,), out: str = "outputs/ablate",
           config_root: str = "configs", overrides: Sequence[str] = (), progress: bool = False,
           verbose: bool = False, log: Log = print) -> Dict[str, Any]:
    """Plan, check, run and summarise (module docstring). Returns ``{"tables": {name: TableResult}, "sweeps":
    [SweepResult], "metrics": {folder: metrics}, "files": [written paths]}``."""
    if not (tables or sweeps or configs):
        raise ConfigError("nothing to run: give --table, --sweep or --configs")
    if SYNTHETIC in datasets and len(datasets) > 1:
        raise ConfigError(f"--dataset {SYNTHETIC} runs alone (it replaces the datasets of the table)")
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise ConfigError(f"unknown table {unknown[0]!r}: the paper's tables are {', '.join(TABLES)}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: each seed once, got {list(seeds)}")
    plan = Plan(out, seeds, config_root, scale_overrides(datasets, out), overrides)
    results = {t: plan_table(plan, TABLES[t], datasets) for t in tables}
    sweep_results = [r for s in sweeps for r in plan_sweep(plan, load_sweep(s, config_root), datasets)]
    if configs:
        results["configs"] = plan_configs(plan, configs, datasets)
    plan.check_folders()
    log(f"esreid ablate: {len(plan.all)} cells ({len(seeds)} seed(s)) into {plan.out}")
    metrics = run_all(plan, progress, verbose, log)
    files = []
    for name, res in results.items():
        md = table_markdown(res, metrics, seeds)
        log("\n" + md)
        files += [_write(plan.out, f"table_{name}.md", md), _write(plan.out, f"table_{name}.csv",
                                                                    table_csv(res, metrics, seeds))]
    for res in sweep_results:
        md, text, png = sweep_outputs(res, metrics, seeds)
        log("\n" + md)
        stem = f"sweep_{res.sweep.name}_{res.column.key}"
        files += [_write(plan.out, f"{stem}.md", md), _write(plan.out, f"{stem}.csv", text)]
        if png:
            from esreid.files import atomic_write

            files.append(atomic_write(os.path.join(plan.out, f"{stem}.png"), png))
    log("written: " + ", ".join(os.path.relpath(f, plan.out) for f in files))
    return {"tables": results, "sweeps": sweep_results, "metrics": metrics, "files": files}


def default_config_root() -> str:
    """``configs`` in the working directory, else the ``configs`` of the checkout esreid is installed from (an
    editable install run from another folder); a plain ``configs`` when neither exists (the error names it)."""
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    return "configs" if os.path.isdir("configs") or not os.path.isdir(checkout) else checkout
