"""Checkpoints: everything needed to resume exactly, written atomically with a checksum, loaded with ``weights_only``.

A checkpoint is a dict ``{format, model, optimizer, scheduler, scaler, epoch, num_classes, rng, generators, config,
metrics, hooks, ranks}`` (``ranks``: every DDP rank's RNG states, :func:`save_checkpoint`). Files are written
through :func:`esreid.files.atomic_writer` (a temporary name in the same folder moved into place with
``os.replace``), so an interrupted save never leaves a half-written file and never destroys the previous one; the free
space is checked first, and a full disk or read-only folder raises a :class:`~esreid.files.StorageError`.

Integrity: every file written by :func:`atomic_save` is the ``torch.save`` zip followed by an 81-byte footer
``b"\\n#esreid-sha256:" + <64 hex digits> + b"\\n"``, the SHA-256 of every byte before the footer. ``torch.load`` (and
``zipfile``) ignore bytes after the zip's end record, so the file stays an ordinary PyTorch file for other tools.
:func:`load_checkpoint` re-computes the hash before unpickling anything (so verifying trusts nothing in the payload)
and raises :class:`CheckpointError` on a mismatch: a flipped byte anywhere, tensor data included (which
``torch.load`` alone loads silently), is caught. A file without a footer is accepted unverified when it ends with the
zip end record (checkpoints of esreid versions before the footer, bare ``torch.save(state_dict)`` files) or is not
a zip (PyTorch's legacy format); a zip that ends with neither is truncated or damaged and rejected. (A file cut
exactly before its footer is thus indistinguishable from an old one and loads unverified: the price of reading old
files.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import re
import shutil
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from esreid.errors import CheckpointError, unreadable_torch_file
from esreid.files import atomic_writer, ensure_free_space

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


_FOOTER_START = b"\n#esreid-sha256:"
_FOOTER = re.compile(re.escape(_FOOTER_START) + rb"([0-9a-f]{64})\n")
FOOTER_SIZE = len(_FOOTER_START) + 64 + 1
_ZIP_START, _ZIP_END = b"PK\x03\x04", b"PK\x05\x06"  # local file header; end of central directory (22 bytes)


class _HashingWriter:
    """File-like ``write`` target for ``torch.save`` that hashes what it passes on and keeps the first ``OSError`` or
    ``KeyboardInterrupt`` (torch's zip writer then fails again while closing and raises a ``RuntimeError`` instead: a
    Ctrl-C during a checkpoint write would end the run as an internal error, not as a stop with its hint)."""

    def __init__(self, f: Any):
        self.f, self.sha256 = f, hashlib.sha256()
        self.error: Optional[BaseException] = None

    def write(self, data: bytes) -> int:
        try:
            self.sha256.update(data)
            return self.f.write(data)
        except (OSError, KeyboardInterrupt) as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj)`` plus its SHA-256 footer (module docstring) to ``path``, atomically.

    Raises:
        StorageError: not enough free space for the estimated size (the previous file at ``path`` or the bytes of
            ``obj``'s tensors, whichever is larger), or the disk filled up / the folder is read-only while writing;
            the previous file is left intact either way.
    """
    folder = os.path.dirname(os.path.abspath(path))
    previous = os.path.getsize(path) if os.path.isfile(path) else 0
    ensure_free_space(folder, max(previous, tensor_bytes(obj)), f"checkpoint {os.path.basename(path)}")
    with atomic_writer(path) as f:
        writer = _HashingWriter(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            raise writer.error from None  # disk full (for atomic_writer to report) or Ctrl-C (the trainer's stop)
        f.write(_FOOTER_START + writer.sha256.hexdigest().encode() + b"\n")


def tensor_bytes(obj: Any) -> int:
    """Bytes of the dense tensor storages inside ``obj`` (nested dicts, lists, tuples), each shared storage counted
    once (sparse tensors are left out of this estimate)."""
    seen: Dict[int, int] = {}
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor) and x.layout == torch.strided:
            storage = x.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return sum(seen.values())


def verify_checkpoint(path: str) -> bool:
    """Check ``path`` against its SHA-256 footer: True when it matches, False for a file without one that is whole
    as far as can be told (module docstring).

    Raises:
        CheckpointError: checksum mismatch, or a zip cut short / damaged at its end; the message suggests the other
            checkpoints of the folder.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_START))
            f.seek(max(0, size - FOOTER_SIZE))
            tail = f.read()
            footer = _FOOTER.fullmatch(tail)
            if footer is None:
                if head == _ZIP_START and not (tail[-22:-18] == _ZIP_END and tail[-2:] == b"\x00\x00"):
                    raise CheckpointError(_corrupt(path, "truncated or damaged: it ends with neither its checksum nor "
                                                         "the end of a zip archive"))
                return False
            f.seek(0)
            sha256, left = hashlib.sha256(), size - FOOTER_SIZE
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:  # shrunk while being read
                    break
                sha256.update(chunk)
                left -= len(chunk)
    except OSError as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e.strerror})") from None
    if sha256.hexdigest() != footer.group(1).decode():
        raise CheckpointError(_corrupt(path, "checksum mismatch: its bytes changed after it was written, e.g. a disk "
                                             "or copy error"))
    return True


def _corrupt(path: str, why: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    others = sorted((n for n in os.listdir(folder) if n.endswith(".pth") and not n.startswith(".") and n != name),
                    reverse=True)
    where = f" ({', '.join(others[:5])}{' ...' if len(others) > 5 else ''} in {folder})" if others else ""
    return f"checkpoint {path} is corrupt ({why}); use another checkpoint{where} or retrain"


def save_checkpoint(path: str, *, model: torch.nn.Module, epoch: int, config: Dict[str, Any],
                    optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None, scaler: Any = None,
                    metrics: Optional[Dict[str, Any]] = None,
                    generators: Optional[Dict[str, torch.Generator]] = None, num_classes: Optional[int] = None,
                    hooks: Optional[Dict[str, Dict[str, Any]]] = None,
                    ranks: Optional[List[Dict[str, Any]]] = None) -> None:
    """Save a full training checkpoint; ``generators`` are extra named RNGs (augmentation, BESM coin flips),
    ``num_classes`` the size of the model's classifiers (what inference builds the model with), ``hooks`` the
    trainer hooks' states by hook name (e.g. the divergence guard's reference loss), ``ranks`` every DDP rank's
    ``{"rng": rng_state(), "generators": {name: state}}`` in rank order (empty for a single process: ``rng`` and
    ``generators`` are its states)."""
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
        "hooks": hooks or {},
        "ranks": ranks or [],
    }
    atomic_save(state, path)


def copy_checkpoint(src: str, dst: str, full: bool = True) -> None:
    """Copy checkpoint ``src`` to ``dst`` atomically after verifying its checksum (a corrupt file is not copied);
    ``full=False`` keeps what a weights-only checkpoint holds (no optimiser, schedule, scaler, generator or hook
    states: what ``Trainer.save_checkpoint(path, full=False)`` writes)."""
    if not full:
        atomic_save(weights_only(load_checkpoint(src)), dst)
        return
    verify_checkpoint(src)
    folder = os.path.dirname(os.path.abspath(dst))
    ensure_free_space(folder, os.path.getsize(src), f"checkpoint {os.path.basename(dst)}")
    with open(src, "rb") as f, atomic_writer(dst) as out:
        shutil.copyfileobj(f, out, 1 << 20)


def weights_only(state: Dict[str, Any]) -> Dict[str, Any]:
    """A full checkpoint's ``state`` as a weights-only one (what ``Trainer.save_checkpoint(path, full=False)``
    writes): no optimiser, schedule, scaler, generator, hook or per-rank states."""
    return {**state, "optimizer": None, "scheduler": None, "scaler": None, "generators": {}, "hooks": {}, "ranks": []}


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint (or a bare model state dict) safely after :func:`verify_checkpoint`; errors name the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/format problem becomes a named error
        raise unreadable_torch_file(path, e) from None
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
    classifier weights (:func:`~esreid.models.base.infer_num_classes`). Another toolkit's checkpoint (``PEER:PATH``,
    or a file that is neither an esreid checkpoint nor a state dict of ``cfg.model``) becomes the model of its layout
    with the peer's retrieval rule (:mod:`esreid.models.importers`; ``cfg.test`` overrides apply)."""
    from esreid.models import importers

    peer, path = importers.split_peer(weights)
    if peer is None:
        state = _esreid_state(cfg, path)
        if state is not None:
            return _build_trained(cfg, state, path)
    return importers.build_imported(importers.identify(weights), cfg.test, cfg.model)


def _esreid_state(cfg: Any, path: str) -> Optional[Dict[str, Any]]:
    """The checkpoint at ``path`` when it is esreid's, or a bare state dict under ``cfg.model``'s top-level modules
    (loaded strictly, so a mismatch names the keys), else None (another toolkit's layout)."""
    from esreid.models import build_model

    try:
        state = load_checkpoint(path, map_location="cpu")
    except CheckpointError:
        if not os.path.isfile(path):
            raise
        return None  # another toolkit's file (a dict of several things, pickled objects): importers tell
    if state.get("format") == FORMAT:
        return state
    tops = {name for name, _ in build_model(dataclasses.replace(cfg.model, pretrained=""), 1).named_children()}
    keys = [k[len("module."):] if k.startswith("module.") else k for k in state["model"]]
    return state if all(k.split(".", 1)[0] in tops for k in keys) else None


def _build_trained(cfg: Any, state: Dict[str, Any], weights: str) -> torch.nn.Module:
    from esreid.models import build_model  # late import: the engine sits above the models
    from esreid.models.base import infer_num_classes

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
