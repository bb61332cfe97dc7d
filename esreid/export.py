"""Deployment: ONNX export of a trained model (``esreid export``) and split features as ``.npz`` (``esreid extract``).

The exported graph maps a normalised float32 image batch ``(B, 3, H, W)`` to the evaluator's retrieval feature
``(B, D)`` by the model's retrieval rule (:meth:`~esreid.models.base.ReIDModel.retrieval_features`): per-branch
features, the flip-sum when the rule flips (in the graph, so the ONNX model alone gives the features ``esreid eval``
ranks with; ``test.flip=false`` exports a graph half the cost), per-branch L2 normalisation when it normalises,
concatenation. Uint8 decoding, resizing and the mean/std normalisation stay outside the graph
(:class:`~esreid.data.transforms.TestTransform`). The graph always runs in float32: ``solver.amp`` is not exported.

Exporter: torch's TorchScript-based exporter (``dynamo=False``). It needs only ``onnx`` (the ``esreid[onnx]``
extra); the ``torch.export``-based one (``dynamo=True``) also exports every model here but needs ``onnxscript``
(with ``onnx_ir``, ``sympy``, ``ml_dtypes``), which the pinned environment does not ship. Torch marks the
TorchScript exporter deprecated; when it goes, switch ``dynamo=True`` and add ``onnxscript`` to the extra. Its tracer
bakes Python-side values into the graph, so every export is checked with onnxruntime against PyTorch, with a second
batch size when the batch axis is dynamic.

``esreid extract`` writes ``feats`` (N, D) float32, ``ids`` (N,) int64 (= pids), ``camids`` (N,) int64 and ``paths``
(N,) str: the layout :func:`esreid.evaluation.search.read_features` reads (``esreid search``).
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from esreid.engine.evaluator import RetrievalModel

TOLERANCE = 1e-4  # max |ONNX - PyTorch| / max(1, max |PyTorch|) accepted by verify_onnx


class ExportError(RuntimeError):
    """The exported graph does not reproduce the PyTorch features (or onnxruntime cannot run it)."""


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError("onnxruntime is not installed; install the optional extra: pip install 'esreid[onnx]'") from e
    return onnxruntime


def export_onnx(net: RetrievalModel, out: str, height: int, width: int, opset: int = 17, dynamic_batch: bool = False,
                batch: int = 2) -> None:
    """Trace ``net`` (eval mode, on the CPU) on a ``(batch, 3, height, width)`` input and write ``out``.

    Graph input ``images`` (B, 3, H, W) float32, output ``feats`` (B, D) float32; B is a dynamic axis
    ``batch`` with ``dynamic_batch``, else fixed to ``batch``.
    """
    net = net.eval().cpu()
    x = torch.randn(batch, 3, height, width)
    axes = {"images": {0: "batch"}, "feats": {0: "batch"}} if dynamic_batch else None
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with warnings.catch_warnings():  # the deprecation notice and tracer notes; verify_onnx is the actual check
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*(legacy TorchScript-based ONNX|feature will be removed)")
        torch.onnx.export(net, (x,), out, dynamo=False, input_names=["images"], output_names=["feats"],
                          opset_version=opset, dynamic_axes=axes)


def verify_onnx(net: nn.Module, path: str, height: int, width: int, batches: Sequence[int] = (2,),
                seed: int = 0) -> float:
    """Run ``path`` with onnxruntime and ``net`` with PyTorch on random ``(b, 3, height, width)`` inputs for each
    ``b`` in ``batches``; return the max absolute difference, raising :class:`ExportError` when it exceeds
    :data:`TOLERANCE` times ``max(1, max |PyTorch feature|)`` (unnormalised features of a full-size model are large,
    and float32 rounding grows with them)."""
    ort = _onnxruntime()
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - any onnxruntime load failure names the file
        raise ExportError(f"{path}: onnxruntime cannot load the exported graph: {e}") from None
    gen = torch.Generator().manual_seed(seed)
    worst = scale = 0.0
    net = net.eval()
    for b in batches:
        x = torch.randn(b, 3, height, width, generator=gen)
        with torch.no_grad():
            want = net(x).numpy()
        (got,) = session.run(["feats"], {"images": x.numpy()})
        if got.shape != want.shape:
            raise ExportError(f"{path}: ONNX output shape {got.shape} != PyTorch {want.shape} for batch {b}")
        worst = max(worst, float(np.abs(got - want).max()))
        scale = max(scale, float(np.abs(want).max()))
    limit = TOLERANCE * max(1.0, scale)
    if not worst <= limit:
        raise ExportError(f"{path}: ONNX output differs from PyTorch by {worst:.3g} (max abs), over {limit:.3g} "
                          f"({TOLERANCE:g} x max(1, largest feature value {scale:.3g}))")
    return worst


def export_model(config: str, weights: str, out: str, overrides: Sequence[str] = (), height: Optional[int] = None,
                 width: Optional[int] = None, opset: int = 17, dynamic_batch: bool = False) -> float:
    """``esreid export``: the trained model (opened by :func:`~esreid.engine.session.open_trained`, unplaced: CPU,
    float32, eager) as an ONNX graph at ``out`` (normalised images ``(B|1, 3, height, width)``, default the config's
    size -> retrieval features), checked with onnxruntime against PyTorch; a mismatch raises :class:`ExportError`.
    Prints what was written; returns the max abs difference."""
    from esreid.engine.session import open_trained

    session = open_trained(config, weights, overrides, device="cpu", place=False)
    cfg, model = session.cfg, session.model
    height, width = height or cfg.data.height, width or cfg.data.width
    net = RetrievalModel(model)
    export_onnx(net, out, height, width, opset, dynamic_batch, batch=2 if dynamic_batch else 1)
    diff = verify_onnx(net, out, height, width, batches=(2, 3) if dynamic_batch else (1,))
    shape = ("B" if dynamic_batch else "1", 3, height, width)
    rule = model.retrieval
    print(f"wrote {out}: images {shape} -> feats (flip={rule.flip}, normalize={rule.normalize}, "
          f"metric={rule.metric}); "
          f"onnxruntime vs PyTorch max abs diff {diff:.3g}")
    return diff


def extract_split(model: nn.Module, dataset, cfg, split: str, device: torch.device
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The evaluator's features of ``split`` (train | query | gallery) of ``dataset`` (a ``ReIDDataset``) by
    ``model`` (placed on ``device`` by :func:`~esreid.engine.session.open_trained`), with the test settings of
    ``cfg``.

    Returns ``feats`` (N, D) float32, ``pids`` (N,) int64, ``camids`` (N,) int64, ``paths`` (N,) str, in dataset order.
    """
    from esreid.data.base import DatasetError
    from esreid.engine.evaluator import extract_items

    items = getattr(dataset, split)
    if not items:
        raise DatasetError(f"{cfg.data.name} ({cfg.data.root}): split {split!r} has no images")
    feats, pids, camids = extract_items(model, items, cfg, device, f"{split} features")
    paths = np.array([item.path for item in items], dtype=str)
    return feats.numpy().astype(np.float32), pids.numpy().astype(np.int64), camids.numpy().astype(np.int64), paths


SPLITS = ("query", "gallery", "train")


def extract_split_features(config: str, weights: str, split: str, out: str, overrides: Sequence[str] = ()) -> None:
    """``esreid extract --split``: features of a dataset split (as ``esreid eval`` computes them) saved as ``.npz``
    with ``feats``, ``ids`` (pids), ``camids``, ``paths``: the input of ``esreid search --gallery/--query``. Prints
    what was written. (Features of any images: :func:`esreid.inference.extract_images`.)"""
    from esreid.config import load_config
    from esreid.data.base import build_dataset
    from esreid.engine.session import open_trained
    from esreid.inference import check_output, save_features

    check_output(out)
    cfg = load_config(config, overrides)
    dataset = build_dataset(cfg.data.name, cfg.data.root, **cfg.data.args)
    session = open_trained(cfg, weights)
    feats, pids, camids, paths = extract_split(session.model, dataset, cfg, split, session.device)
    save_features(out, feats, paths, pids, camids)
    print(f"wrote {out}: {split} features {feats.shape} of {cfg.data.name}")
