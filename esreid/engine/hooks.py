"""Trainer hooks: everything around the optimisation step (evaluation, checkpoints, logging, diagnostics).

A hook subclasses :class:`HookBase` and overrides any of ``before_train``, ``before_epoch``, ``before_step``,
``after_step``, ``after_epoch``, ``after_train`` (fast-reid's ``HookBase`` shape) and ``after_resume`` (once, when
the trainer has restored a checkpoint); ``self.trainer`` is the running trainer as a :class:`TrainerView`: exactly
what hooks may read and call (its ``state``, a :class:`TrainState`, holds the epoch, the iteration, the current batch
and the step's loss terms). Hooks run in list order. Records (dicts
with a ``"type"``: ``train``, ``epoch``, ``eval``) go through ``trainer.emit(record)`` to every hook's ``on_record``,
so writers (JSONL, TensorBoard, console) are independent of the hooks that produce records; an evaluation's record
comes with the results of its test cases (each with the features it ranked, :class:`~esreid.engine.testsets.
CaseResult`) to ``on_eval``. A hook with state to carry over a resume names it (``name``).

Diagnostics are hooks registered in :data:`HOOKS` by name and switched on by the ``diagnostics`` config section
(:func:`diagnostic_hooks`); the registry imports the modules that define them (``locations``), so the trainer
itself knows no method and no eraser.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Optional, Protocol, Sequence, Tuple

import torch

from esreid.engine.checkpoint import atomic_save, copy_checkpoint, load_checkpoint, weights_only
from esreid.errors import CheckpointError
from esreid.evaluation.metric_keys import MetricKey, format_metrics
from esreid.files import append_text, atomic_write, read_jsonl, reported
from esreid.registry import Registry

if TYPE_CHECKING:
    from esreid.config import Config
    from esreid.data.base import ReIDDataset
    from esreid.engine.testsets import CaseResult
    from esreid.models.base import ReIDModel

HOOKS = Registry("hook", locations=("esreid.engine.diagnostics",))  # the diagnostic hooks, imported on first lookup


@dataclass
class TrainState:
    """What hooks may read: 0-based ``epoch``, ``iter`` = optimisation steps done, the current ``batch`` (augmented
    ``images`` (B, 3, H, W) and ``pids`` (B,) on the device), ``terms`` (the last step's loss terms as floats; hooks
    may add entries in ``before_step`` / ``after_step``, e.g. ``erased_loss``) and ``metrics`` (last evaluation)."""

    epoch: int = 0
    iter: int = 0
    batch: Dict[str, torch.Tensor] = field(default_factory=dict)
    terms: Dict[str, float] = field(default_factory=dict)
    extra: Dict[str, float] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)


class TrainerView(Protocol):
    """What a hook may read and call of the trainer (:class:`~esreid.engine.trainer.Trainer` implements it; a test
    checks that the hooks use nothing else). ``last_checkpoint`` is the one attribute a hook sets (the checkpoint
    hook, after writing ``last.pth``)."""

    cfg: Config
    out: str  # output_dir
    device: torch.device
    model: ReIDModel  # the plain module (not the DDP wrapper)
    dataset: ReIDDataset
    state: TrainState
    start_epoch: int  # epochs done when this session started
    resumed_epochs: Optional[int]  # solver.epochs of the run a resumed checkpoint comes from
    global_batch_size: int
    history: List[Dict[str, Any]]  # every evaluation of the run, {"epoch": ..., **metrics}
    last_checkpoint: Optional[Tuple[str, int]]  # (path, epoch) of the newest checkpoint of this run
    log: Callable[[str], None]  # a console line (and log.txt)

    def lr(self) -> float: ...

    def emit(self, record: Dict[str, Any], results: Optional[Sequence[CaseResult]] = None) -> None: ...

    def evaluate(self) -> Tuple[Dict[str, Any], List[CaseResult]]: ...

    def save_checkpoint(self, path: str, full: bool = True, epoch: Optional[int] = None) -> None: ...

    def continue_command(self, extra: Sequence[str] = ()) -> str: ...


class HookBase:
    """Base of the trainer hooks: every method is a no-op. ``name``: the key of the hook's :meth:`state_dict` in
    checkpoints (required when it has state)."""

    trainer: TrainerView
    name: ClassVar[str] = ""

    def before_train(self) -> None: ...

    def before_epoch(self) -> None: ...

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...

    def after_epoch(self) -> None: ...

    def after_train(self) -> None: ...

    def after_resume(self) -> None:
        """The trainer has restored a checkpoint (``start_epoch``, ``last_checkpoint`` and the hooks' states are set),
        before anything trains or evaluates: make what this hook keeps in the run folder agree with it."""

    def on_record(self, record: Dict[str, Any]) -> None:
        """A record emitted by the trainer or another hook."""

    def on_eval(self, record: Dict[str, Any], results: Sequence[CaseResult]) -> None:
        """An evaluation of this session: its ``eval`` record (right after this hook's :meth:`on_record` of it) and
        the result of each test case (the primary one first), with the query / gallery features it ranked."""

    def generators(self) -> Dict[str, torch.Generator]:
        """RNGs this hook owns (saved in checkpoints with the trainer's)."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        """What this hook must carry over a resume (numbers, tensors, lists, dicts), saved in checkpoints under its
        ``name``; empty: nothing."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (called on resume when the checkpoint holds it)."""


# --------------------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------------------
class JSONLWriter(HookBase):
    """Appends every record to ``<output_dir>/metrics.jsonl`` (main process only). On start it drops the records of
    epochs after the one the run starts from (left by an interrupted run: they are redone)."""

    def __init__(self, path: str):
        self.path = path

    def before_train(self) -> None:
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                kept = [line for line in f if record_epoch(line) <= self.trainer.start_epoch]
            atomic_write(self.path, "".join(kept))

    def on_record(self, record: Dict[str, Any]) -> None:
        append_text(self.path, json.dumps(record) + "\n")


def record_epoch(line: str) -> float:
    """The epoch of a metrics.jsonl line; infinity for a line cut short by a crash."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class TensorBoardWriter(HookBase):
    """Every numeric value of every record as a scalar ``<type>/<key>``, and of each test case of an evaluation as
    ``eval/<case>/<key>`` (x = iteration for train records, else epoch); needs the ``tensorboard`` extra."""

    def __init__(self, folder: str):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        with reported(folder):
            self.writer = SummaryWriter(folder)

    def on_record(self, record: Dict[str, Any]) -> None:
        step = record.get("iter", record["epoch"])
        cases = record.get("cases") if isinstance(record.get("cases"), dict) else {}
        scalars = [(f"{record['type']}/{k}", v) for k, v in record.items()]
        scalars += [(f"{record['type']}/{case}/{k}", v) for case, m in cases.items() for k, v in m.items()]
        with reported(self.folder):
            for tag, value in scalars:
                if isinstance(value, float):
                    self.writer.add_scalar(tag, value, step)
            self.writer.flush()

    def after_train(self) -> None:
        self.writer.close()


class ConsoleWriter(HookBase):
    """One line per epoch record and per evaluation, through the trainer's ``log`` function."""

    def on_record(self, record: Dict[str, Any]) -> None:
        if record["type"] == "epoch":
            self.trainer.log(format_epoch(record))
        elif record["type"] == "eval":
            for line in format_cases(record, f"epoch {record['epoch']}"):
                self.trainer.log(line)


_EPOCH_META = ("type", "epoch", "epochs", "seconds", "images_per_second", "data_seconds", "eta_seconds",
               "peak_memory_mb", "lr")


def format_epoch(r: Dict[str, Any]) -> str:
    """``epoch 3/8  1.1s  304 img/s  data 0.12s  ETA 6.12 s  peak 412 MiB  lr=3.50e-03  <loss terms>`` (the parts
    whose keys the record holds)."""
    from esreid.console import format_seconds

    losses = "  ".join(f"{k}={v:.3f}" for k, v in r.items() if k not in _EPOCH_META and isinstance(v, float))
    parts = [f"epoch {r['epoch']:3d}" + (f"/{r['epochs']}" if "epochs" in r else ""), f"{r['seconds']:.1f}s",
             f"{r['images_per_second']:.0f} img/s"]
    if "data_seconds" in r:
        parts.append(f"data {r['data_seconds']:.2f}s")
    if "eta_seconds" in r:
        parts.append(f"ETA {format_seconds(r['eta_seconds'])}")
    if "peak_memory_mb" in r:
        parts.append(f"peak {r['peak_memory_mb']:.0f} MiB")
    return "  ".join(parts + [f"lr={r['lr']:.2e}", losses])


def format_cases(metrics: Dict[str, Any], title: str = "") -> List[str]:
    """:func:`~esreid.evaluation.metric_keys.format_metrics` of an evaluation: one line, or one per test case
    (``<title> <case>: ...``, each case's metrics as its protocol declares them) when it has several."""
    cases = metrics.get("cases")
    if not isinstance(cases, dict) or len(cases) < 2:
        return [format_metrics(metrics, title)]
    return [format_metrics(m, f"{title} {name}".strip()) for name, m in cases.items()]


def case_value(record: Dict[str, Any], case: str, metric: str) -> Any:
    """``metric`` of test ``case`` in an evaluation record (``""``: the primary case, the top level)."""
    if not case:
        return record.get(metric)
    return (record.get("cases") or {}).get(case, {}).get(metric)


# --------------------------------------------------------------------------------------------------------------
# Training-loop hooks
# --------------------------------------------------------------------------------------------------------------
class TrainLog(HookBase):
    """A ``train`` record every ``period`` iterations (lr and the step's loss terms) and an ``epoch`` record after
    each epoch: wall time, images/s, ``data_seconds`` (time between the steps: waiting for the loader, the transfer,
    the batched augmentation, and the diagnostics' before-step probes when they are on), ``eta_seconds`` (the rest
    of the run at the pace so far, evaluations and checkpoints included), ``peak_memory_mb``
    (:func:`esreid.console.peak_memory_mb`), lr, the epoch's mean loss terms and the model's ``stats()``."""

    def __init__(self, period: int):
        self.period = period
        self.sums: Dict[str, float] = {}
        self.steps = 0
        self.start = self.waiting_since = self.data_seconds = self.train_start = 0.0

    def before_train(self) -> None:
        self.train_start = time.perf_counter()

    def before_epoch(self) -> None:
        self.sums, self.steps, self.data_seconds = {}, 0, 0.0
        self.start = self.waiting_since = time.perf_counter()

    def before_step(self) -> None:
        self.data_seconds += time.perf_counter() - self.waiting_since

    def after_step(self) -> None:
        self.waiting_since = time.perf_counter()
        t, state = self.trainer, self.trainer.state
        terms = {**state.terms, **state.extra}
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        if self.period and state.iter % self.period == 0:
            t.emit({"type": "train", "epoch": state.epoch + 1, "iter": state.iter, "lr": t.lr(), **terms})

    def after_epoch(self) -> None:
        from esreid.console import peak_memory_mb

        t = self.trainer
        now = time.perf_counter()
        seconds, epoch, epochs = now - self.start, t.state.epoch + 1, t.cfg.solver.epochs
        eta = (now - self.train_start) / (epoch - t.start_epoch) * (epochs - epoch)
        record = {"type": "epoch", "epoch": epoch, "epochs": epochs, "seconds": seconds,
                  "images_per_second": self.steps * t.global_batch_size / max(seconds, 1e-9),
                  "data_seconds": self.data_seconds, "eta_seconds": eta, "peak_memory_mb": peak_memory_mb(t.device),
                  "lr": t.lr(),
                  **{k: v / max(self.steps, 1) for k, v in self.sums.items()},
                  **{k: float(v) for k, v in t.model.stats().items()}}
        t.emit(record)


class CheckpointHook(HookBase):
    """After every epoch: ``last.pth`` (everything needed to resume exactly) and, every ``cfg.period`` epochs,
    ``epoch_XXX.pth`` (model weights only unless ``cfg.full``), keeping the newest ``cfg.keep_last`` of them (0: all).
    Runs before the evaluation, so a failing evaluation never loses the epoch. On resume, the periodic checkpoint of
    the epoch resumed from is re-created (from the checkpoint resumed from) when a kill during its write lost it.
    ``cfg``: the ``checkpoint`` section."""

    def __init__(self, folder: str, cfg: Any):
        self.folder, self.cfg = folder, cfg

    def periodic(self, epoch: int) -> Optional[str]:
        period = self.cfg.period
        return periodic_path(self.folder, epoch) if period and epoch % period == 0 else None

    def before_train(self) -> None:
        t = self.trainer
        path = self.periodic(t.start_epoch) if t.last_checkpoint is not None else None
        if path is not None and not os.path.exists(path):
            copy_checkpoint(t.last_checkpoint[0], path, full=self.cfg.full)
            t.log(f"re-created {path} (lost when the run was stopped while writing it)")

    def after_epoch(self) -> None:
        t = self.trainer
        epoch = t.state.epoch + 1
        last = os.path.join(self.folder, "last.pth")
        t.save_checkpoint(last)
        t.last_checkpoint = (last, epoch)
        path = self.periodic(epoch)
        if path is not None:
            t.save_checkpoint(path, full=self.cfg.full)
            if self.cfg.keep_last:  # the oldest epochs go (never the file just written: a resumed earlier epoch)
                for old in periodic_checkpoints(self.folder)[: -self.cfg.keep_last]:
                    if old != path:
                        os.remove(old)


PERIODIC = re.compile(r"epoch_(\d{3,})\.pth")


def periodic_path(folder: str, epoch: int) -> str:
    return os.path.join(folder, f"epoch_{epoch:03d}.pth")


def periodic_checkpoints(folder: str) -> List[str]:
    """Paths of the ``epoch_XXX.pth`` files in ``folder``, oldest epoch first."""
    found = [(int(m.group(1)), name) for name in os.listdir(folder) if (m := PERIODIC.fullmatch(name))]
    return [os.path.join(folder, name) for _, name in sorted(found)]


class BestCheckpointHook(HookBase):
    """``model_best.pth`` (model weights, or everything with ``full``) whenever an evaluation's ``metric`` on test
    case ``case`` (``""``: the primary one, ``checkpoint.best_on``) beats every earlier one of the run (in the
    direction its protocol declares); the file records the metrics it was written with.

    On resume (:meth:`after_resume`, before any catch-up evaluation) the file is checked against the best evaluation
    ``records`` (``metrics.jsonl``, written before the file) holds up to the epoch resumed from: a file that is
    missing, corrupt, or of another epoch (a kill during its write left the previous one) is re-created from that
    epoch's checkpoint when one is left (the checkpoint resumed from, or ``epoch_XXX.pth``), else removed with a
    warning and written again at the next improvement. The value to beat is the recorded best, so a bad file never
    stops a resume nor lets a worse evaluation in. Without records (a run forked into a new folder) the file's own
    value is the one to beat."""

    def __init__(self, folder: str, metric: MetricKey, full: bool = False, case: str = "", records: str = ""):
        self.folder, self.metric, self.full, self.case, self.records = folder, metric, full, case, records
        self.path = os.path.join(folder, "model_best.pth")
        self.best = metric.worst  # the value to beat: a resumed run's from after_resume

    def after_resume(self) -> None:
        self.best = self.reconcile()

    def value(self, record: Dict[str, Any]) -> Any:
        """The metric of the deciding case in an evaluation record (or a checkpoint's ``metrics``)."""
        return case_value(record, self.case, self.metric.key)

    def reconcile(self) -> float:
        """Make ``model_best.pth`` agree with the recorded best evaluation (class docstring); its value."""
        t, key = self.trainer, self.metric.key
        best, value = None, self.metric.worst  # the first epoch reaching the best value: the one written
        for r in read_jsonl(self.records):
            seen = r.get("type") == "eval" and isinstance(r.get("epoch"), int) and r["epoch"] <= t.start_epoch
            found = self.value(r) if seen else None
            if isinstance(found, (int, float)) and self.metric.improves(found, value):
                best, value = r, float(found)
        if best is None:
            saved = self.saved_state()
            found = None if saved is None else self.value(saved.get("metrics", {}))
            return self.metric.worst if found is None else float(found)
        epoch = best["epoch"]
        saved = self.saved_state()
        if saved is not None and saved.get("epoch") == epoch and self.value(saved.get("metrics", {})) == value:
            return value
        problem = "stale (it holds epoch {})".format(saved.get("epoch")) if saved is not None else \
            "corrupt" if os.path.exists(self.path) else "missing"
        what = f"epoch {epoch}, {key} {value:.4g}"
        source = self.checkpoint_of(epoch)
        if source is None:
            if os.path.exists(self.path):
                os.remove(self.path)
                problem += ", removed"
            t.log(f"warning: {self.path} was {problem}; no checkpoint of the best evaluation ({what}) is left to "
                  f"re-create it from: it is written again when an evaluation beats {key} {value:.4g}")
            return value
        path, state = source
        state.update(epoch=epoch, metrics={k: v for k, v in best.items() if k not in ("type", "epoch")})
        atomic_save(state if self.full else weights_only(state), self.path)
        t.log(f"re-created {self.path} ({what}) from {path}: it was {problem}")
        return value

    def saved_state(self) -> Optional[Dict[str, Any]]:
        """The state ``model_best.pth`` holds; None when it is missing or corrupt."""
        if not os.path.exists(self.path):
            return None
        try:
            return load_checkpoint(self.path)
        except CheckpointError:
            return None

    def checkpoint_of(self, epoch: int) -> Optional[Tuple[str, Dict[str, Any]]]:
        """A readable checkpoint of ``epoch`` (full when ``full``): the one resumed from, or ``epoch_XXX.pth``."""
        t = self.trainer
        candidates = [periodic_path(self.folder, epoch)]
        if t.last_checkpoint is not None and t.last_checkpoint[1] == epoch:
            candidates.insert(0, t.last_checkpoint[0])
        for path in candidates:
            try:
                state = load_checkpoint(path) if os.path.exists(path) else {}
            except CheckpointError:
                continue
            if state.get("epoch") == epoch and (state.get("optimizer") is not None or not self.full):
                return path, state
        return None

    def on_record(self, record: Dict[str, Any]) -> None:
        value = self.value(record) if record["type"] == "eval" else None
        if isinstance(value, (int, float)) and self.metric.improves(value, self.best):
            self.best = float(value)
            self.trainer.save_checkpoint(self.path, full=self.full, epoch=record["epoch"])  # also a resume's catch-up


class EvalHook(HookBase):
    """Evaluate every ``period`` epochs and after the last one (main process only); emits an ``eval`` record and keeps
    the metrics in ``trainer.state.metrics`` and ``trainer.history``.

    On resume, the evaluation of the epoch resumed from is taken from ``records`` (``metrics.jsonl``), or run first
    when it was due and has no record (the run was stopped during it): a finished run re-reports its results."""

    def __init__(self, period: int, records: str = ""):
        self.period, self.records = period, records

    def due(self, epoch: int) -> bool:
        return epoch >= self.trainer.cfg.solver.epochs or bool(self.period and epoch % self.period == 0)

    def before_train(self) -> None:
        t = self.trainer
        epoch = t.start_epoch
        if not epoch:
            return
        recorded = [r for r in read_jsonl(self.records) if r.get("type") == "eval" and r.get("epoch") == epoch]
        if recorded:
            metrics = {k: v for k, v in recorded[-1].items() if k not in ("type", "epoch")}
            t.state.metrics = metrics
            t.history.append({"epoch": epoch, **metrics})
        elif self.due(epoch) or epoch == t.resumed_epochs:
            self.evaluate(epoch)

    def after_epoch(self) -> None:
        epoch = self.trainer.state.epoch + 1
        if self.due(epoch):
            self.evaluate(epoch)

    def evaluate(self, epoch: int) -> None:
        t = self.trainer
        metrics, results = t.evaluate()
        t.state.metrics = metrics
        t.history.append({"epoch": epoch, **metrics})
        t.emit({"type": "eval", "epoch": epoch, **metrics}, results)


def diagnostic_hooks(cfg: Any, seed: int) -> List[HookBase]:
    """The diagnostic hooks the config switches on (``diagnostics.<name>: true`` for a name in :data:`HOOKS`), each
    built as ``hook(cfg, seed)``."""
    return [HOOKS.get(name)(cfg, seed) for name in HOOKS.names() if getattr(cfg.diagnostics, name, False)]
