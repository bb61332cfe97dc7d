"""Opening a trained model for use: the one way every command (``eval``, ``explain``, ``visualize``, ``export``,
``extract``) and :class:`~esreid.inference.FeatureExtractor` do it (:func:`open_trained`), and the runtime rules the
trainer shares with them (:func:`resolve_device`, :func:`seed_everything`).

:func:`open_trained` applies the thread rule (:mod:`esreid.engine.threads`), resolves the device (``cfg.device``
unless the caller overrides it), builds the model and loads the checkpoint strictly with ``weights_only=True``
(:func:`~esreid.engine.checkpoint.load_trained_model`), tells the model how its images are normalised
(``set_input_normalization``, as the trainer does) and places it as the trainer places it
(:func:`~esreid.engine.compile.place_model`: device, ``solver.channels_last``, ``solver.compile``). So a model opened
here ranks exactly as the evaluation at the end of training ranked.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from esreid.errors import CheckpointError, ConfigError

RUN_WEIGHTS = ("model_best.pth", "last.pth")  # what a run folder is read with, in order of preference


def resolve_device(name: Union[str, torch.device]) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a device this machine
    does not have is a :class:`~esreid.errors.ConfigError` naming the key ``device``."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"key 'device': {name!r} requested but CUDA is not available here; use device=cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"key 'device': {name!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    mps = getattr(torch.backends, "mps", None)
    if device.type == "mps" and not (mps is not None and mps.is_available()):
        raise ConfigError(f"key 'device': {name!r} requested but MPS (Apple GPUs) is not available here; use "
                          "device=cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_run(config: Any, weights: Optional[str] = None, overrides: Sequence[str] = ()) -> Tuple[Any, str]:
    """``(cfg, weights path)`` from a config file + checkpoint, a loaded :class:`~esreid.config.Config` + checkpoint,
    or a run folder (its ``config.yaml`` and, unless ``weights`` is given, ``model_best.pth`` when present, else
    ``last.pth``)."""
    from esreid.config import Config, load_config

    if isinstance(config, Config):
        if overrides:
            raise ConfigError("overrides apply to a config file or run folder, not to a loaded Config (change it "
                              "with dataclasses.replace)")
        cfg = config
    elif os.path.isdir(config):
        path = os.path.join(config, "config.yaml")
        if not os.path.isfile(path):
            raise ConfigError(f"{config}: not a run folder (no config.yaml); give a config file and --weights, or the "
                              "output_dir of an esreid train run")
        cfg = load_config(path, list(overrides))
        if weights is None:
            found = [os.path.join(config, n) for n in RUN_WEIGHTS if os.path.isfile(os.path.join(config, n))]
            if not found:
                raise CheckpointError(f"{config}: no {' or '.join(RUN_WEIGHTS)} in this run folder (has the run "
                                      "finished an epoch?); give the checkpoint as weights")
            weights = found[0]
    else:
        cfg = load_config(os.fspath(config), list(overrides))
    if weights is None:
        raise CheckpointError(f"{config}: a config file needs its trained weights (a .pth checkpoint), or give the "
                              "run folder instead")
    return cfg, os.fspath(weights)


@dataclass
class Session:
    """A trained model ready for use: its config, checkpoint path, device and the placed model (eval mode)."""

    cfg: Any
    weights: str
    device: torch.device
    model: torch.nn.Module


def open_trained(config: Any, weights: Optional[str] = None, overrides: Sequence[str] = (),
                 device: Optional[Union[str, torch.device]] = None, place: bool = True) -> Session:
    """Open a trained model (module docstring).

    Args:
        config: a run folder, a YAML config path or a loaded :class:`~esreid.config.Config` (:func:`load_run`).
        weights: the checkpoint (required with a config; overrides a run folder's choice).
        overrides: ``key=value`` config overrides (with a path or run folder).
        device: overrides ``cfg.device`` (``auto``, ``cpu``, ``cuda[:N]``, ``mps`` or a ``torch.device``).
        place: False leaves the model as loaded (CPU, contiguous memory, eager): what ``esreid export`` traces.
    """
    from esreid.engine.checkpoint import load_trained_model
    from esreid.engine.compile import place_model
    from esreid.engine.threads import apply_threads

    cfg, weights = load_run(config, weights, overrides)
    apply_threads(cfg)
    dev = resolve_device(cfg.device if device is None else device)
    model = load_trained_model(cfg, weights)
    model.set_input_normalization(cfg.data.mean, cfg.data.std)
    if place:
        model = place_model(model, cfg.solver, dev)
    return Session(cfg, weights, dev if place else torch.device("cpu"), model)
