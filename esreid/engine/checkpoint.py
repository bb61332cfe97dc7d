"""Checkpoints: everything needed to resume exactly, written atomically, loaded with ``weights_only=True``.

A checkpoint is a dict ``{format, model, optimizer, scheduler, scaler, epoch, num_classes, rng, generators, config,
metrics}``. Files are written
to a temporary name in the same folder and moved into place with ``os.replace``, so an interrupted save never leaves a
half-written file and never destroys the previous one.
"""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
from typing import Any, Dict, Optional

import numpy as np
import torch

from esreid.errors import CheckpointError

FORMAT = "esreid-checkpoint-v1"


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/ints (so ``weights_only`` loading accepts them)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file next to ``path`` then ``os.replace`` it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(path: str, *, model: torch.nn.Module, epoch: int, config: Dict[str, Any],
                    optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None, scaler: Any = None,
                    metrics: Optional[Dict[str, Any]] = None,
                    generators: Optional[Dict[str, torch.Generator]] = None, num_classes: Optional[int] = None) -> None:
    """Save a full training checkpoint; ``generators`` are extra named RNGs (augmentation, BESM coin flips),
    ``num_classes`` the size of the model's classifiers (what inference builds the model with)."""
    state = {
        "format": FORMAT,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": epoch,
        "num_classes": num_classes,
        "rng": rng_state(),
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
        "config": config,
        "metrics": metrics or {},
    }
    atomic_save(state, path)


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint (or a bare model state dict) safely; errors name the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/format problem becomes a named error
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(state).__name__}")
    if state.get("format") != FORMAT:
        if all(isinstance(v, torch.Tensor) for v in state.values()):
            return {"model": state}  # a bare state dict
        raise CheckpointError(f"{path}: not an esreid checkpoint (missing 'format': {FORMAT!r})")
    return state


def load_model_weights(model: torch.nn.Module, state: Dict[str, Any], path: str) -> None:
    """Strictly load ``state['model']`` into ``model``; a mismatch names the keys and the file."""
    weights = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state["model"].items()}
    own = unwrap(model).state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in weights and own[k].shape != weights[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append("shape mismatches " + "; ".join(shapes[:8]))
        raise CheckpointError(f"{path}: weights do not fit the model built from the config: " + ", ".join(parts))
    unwrap(model).load_state_dict(weights, strict=True)


def load_trained_model(cfg: Any, weights: str) -> torch.nn.Module:
    """Build ``cfg.model`` (with ``cfg.test``'s retrieval overrides) without ImageNet weights (the file replaces
    every weight) for the number of classes the file records, and load ``weights`` strictly. CPU, eval mode.

    Files without a recorded class count (esreid 0.1 checkpoints, bare state dicts) get it from the shapes of their
    classifier weights (:func:`~esreid.models.base.infer_num_classes`)."""
    from esreid.models import build_model  # late import: the engine sits above the models
    from esreid.models.base import infer_num_classes

    state = load_checkpoint(weights, map_location="cpu")
    model_cfg = dataclasses.replace(cfg.model, pretrained="")
    num_classes = state.get("num_classes")
    if num_classes is None:
        try:
            num_classes = infer_num_classes(lambda n: build_model(model_cfg, n), state["model"])
        except ValueError as e:
            raise CheckpointError(f"{weights}: {e}") from None
    model = build_model(model_cfg, int(num_classes), cfg.test)
    load_model_weights(model, state, weights)
    return model.eval()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model
