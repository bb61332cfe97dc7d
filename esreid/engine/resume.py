"""Resume safety: what a resumed run may change, and applying the current solver settings to a restored optimiser.

A checkpoint records the config it was trained with. Resuming compares it with the current config
(:func:`check_resume_config`): keys that do not change what is trained (:data:`NON_RUN_KEYS`, each with its reason)
may differ freely; any other difference stops with a :class:`~esreid.errors.ConfigError` listing the differences,
unless ``--allow-changes KEY...`` (the Trainer's ``allow_changes``) names each of them or a section holding it. An
allowed change is applied, not ignored: the optimiser and schedule are rebuilt from the current config and only their
state (moments, step count) comes from the checkpoint (:func:`restore_solver`), and ``config.yaml`` records the
current config.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from esreid.config import Config, to_dict
from esreid.errors import ConfigError

# Keys (or whole sections) whose value does not change what a run trains, with the reason. Everything else does.
NON_RUN_KEYS: Dict[str, str] = {
    "output_dir": "where the files go (resuming a checkpoint into another folder forks the run)",
    "device": "where the same computation runs (results agree up to floating-point rounding)",
    "solver.channels_last": "the memory layout of the same computation (results agree up to floating-point rounding)",
    "solver.compile": "the same computation compiled (results agree up to floating-point rounding)",
    "threads": "CPU threads of the same computation (results agree up to floating-point rounding)",
    "solver.epochs": "the schedule counts absolute epochs (milestones), so a run can be extended or ended earlier",
    "log_period": "logging only",
    "tensorboard": "logging only",
    "report": "report.html only",
    "checkpoint": "which checkpoints are kept and what they hold",
    "data.root": "where the dataset lies, not what it holds (other identities would not fit the classifier)",
    "data.workers": "decoding processes: the batches and their order do not depend on them",
    "data.cache": "the decoded-image cache holds the same pixels, read faster",
    "data.cache_dir": "the decoded-image cache holds the same pixels, read faster",
    "data.test_batch_size": "evaluation batching",
    "test": "evaluation settings change what is reported, not what is trained",
    "diagnostics": "probes that observe the model and restore its state and RNGs",
    "guard": "the divergence guard can only stop a run",
    "model.pretrained": "a resumed model's weights all come from the checkpoint",
}

# Keys of older checkpoints' configs -> their current name (compared under that name)
RENAMED_KEYS: Dict[str, str] = {"checkpoint_period": "checkpoint.period"}
# Run keys added after checkpoints were written without them -> the value those checkpoints were trained with
ADDED_KEYS: Dict[str, Any] = {"data.train": []}
ABSENT = object()  # a key the other config does not have (e.g. a checkpoint of an older esreid)
Change = Tuple[str, Any, Any]  # (dotted key, value in the checkpoint, current value)


def flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"solver": {"lr": 1}}`` -> ``{"solver.lr": 1}`` (dataset and protocol arguments flattened too)."""
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def under(key: str, names: Sequence[str]) -> Optional[str]:
    """The entry of ``names`` that is ``key`` or a section holding it."""
    return next((n for n in names if key == n or key.startswith(n + ".")), None)


def run_changes(saved: Dict[str, Any], current: Dict[str, Any]) -> List[Change]:
    """Differences between two config dicts in keys that change the run (not under :data:`NON_RUN_KEYS`)."""
    old = {RENAMED_KEYS.get(k, k): v for k, v in flatten(saved).items()}
    old = {**{k: v for k, v in ADDED_KEYS.items() if saved}, **old}
    new = flatten(current)
    keys = list(new) + [k for k in old if k not in new]
    return [(k, old.get(k, ABSENT), new.get(k, ABSENT)) for k in keys
            if old.get(k, ABSENT) != new.get(k, ABSENT) and under(k, list(NON_RUN_KEYS)) is None]


def show(value: Any) -> str:
    return "(absent)" if value is ABSENT else repr(value)


def describe(changes: Sequence[Change]) -> str:
    return "; ".join(f"{k} {show(a)} -> {show(b)}" for k, a, b in changes)


def check_allowed(allowed: Sequence[str], keys: Sequence[str]) -> None:
    """Every name given to ``--allow-changes`` is one of the config ``keys`` (dotted) or a section holding one."""
    for name in allowed:
        if not any(k == name or k.startswith(name + ".") for k in keys):
            raise ConfigError(f"--allow-changes: {name!r} is not a config key or section (e.g. solver.lr, solver)")


def check_resume_config(path: str, saved: Optional[Dict[str, Any]], cfg: Config,
                        allowed: Sequence[str] = ()) -> List[Change]:
    """The run-changing differences between the config recorded in checkpoint ``path`` and ``cfg``, all allowed.

    Raises:
        ConfigError: a difference that ``allowed`` does not name (all of them listed), or an allowed name that is no
            key of either config.
    """
    saved, current = saved or {}, to_dict(cfg)
    check_allowed(allowed, [*flatten(current), *flatten(saved)])
    changes = run_changes(saved, current)
    refused = [c for c in changes if under(c[0], allowed) is None]
    if refused:
        raise ConfigError(f"resuming {path} with a config that changes the run: {describe(refused)}; the checkpoint "
                          "was trained with the old values: keep them, or continue with the new ones by adding "
                          f"--allow-changes {' '.join(k for k, _, _ in refused)}, or start a new run in another "
                          "output_dir")
    return changes


def restore_solver(optimizer: torch.optim.Optimizer, scheduler: Any, fresh: List[Dict[str, Any]],
                   iteration: int) -> None:
    """After loading an optimiser and schedule state: put back the hyperparameters of the freshly built optimiser
    (``fresh``: its param groups without ``params``, taken before loading, i.e. the current config's lr, weight decay,
    momentum, ...) and set the schedule to ``iteration`` with the current config's base lr.

    For an unchanged config this reproduces the loaded values exactly (the lr is the same ``base_lr *
    lr_lambda(iteration)`` product the schedule computed), so resuming stays bit-identical.
    """
    for group, values in zip(optimizer.param_groups, fresh):
        group.update(values)
    scheduler.base_lrs = [values["initial_lr"] for values in fresh]
    scheduler.last_epoch = iteration
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(iteration)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
