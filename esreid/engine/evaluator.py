"""Feature extraction (by the model's retrieval rule) and protocol evaluation of a model."""

from __future__ import annotations

import contextlib
import time
from typing import Dict, List, Sequence, Tuple

import torch

from esreid.data.base import ImageItem, ReIDDataset
from esreid.errors import EsreidError


def autocast(device: torch.device, amp: str):
    """bf16/fp16 autocast context for ``device`` (``amp`` = none | bf16 | fp16)."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class RetrievalModel(torch.nn.Module):
    """A :class:`~esreid.models.base.ReIDModel` in eval mode returning the vector its retrieval rule ranks:
    ``(B, 3, H, W)`` normalised -> ``(B, ΣD_i)`` float32 (:meth:`ReIDModel.retrieval_features`: flip-sum per branch
    when the rule says so, per-branch L2, concatenation). Used by the evaluator and exported as is to ONNX."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.retrieval_features(images)


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader, device: torch.device, transform,
                     amp: str = "none") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` in eval mode over ``loader``.

    Returns:
        feats (N, D) float32 on the CPU (the model's retrieval vector; with a flip rule each branch's feature is the
        sum of the original and the horizontally flipped image's: "left-right flipping is also utilised in the
        testing stage", ES-Net §IV-A-2), pids (N,), camids (N,), in loader order.
    """
    was_training = model.training
    model.eval()
    feats: List[torch.Tensor] = []
    pids: List[torch.Tensor] = []
    camids: List[torch.Tensor] = []
    try:
        for batch in loader:
            images = transform(batch["images"].to(device, non_blocking=True))
            with autocast(device, amp):
                feats.append(model.retrieval_features(images).cpu())
            pids.append(batch["pids"])
            camids.append(batch["camids"])
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(pids), torch.cat(camids)


class NonFiniteFeatures(EsreidError):
    """The model gives NaN, inf or overflowing features: its weights or BatchNorm statistics are not finite or have
    exploded."""


def check_finite(feats: torch.Tensor, items: Sequence[ImageItem], split: str) -> None:
    """Raise :class:`NonFiniteFeatures` naming the images whose features ``(N, D)`` are not finite or so large that
    their squared norm (hence a distance) overflows float32."""
    if not feats.numel():
        return
    bad = (~torch.isfinite(feats.float().pow(2).sum(dim=1))).nonzero().flatten().tolist()
    if bad:
        raise NonFiniteFeatures(f"the model gives non-finite (or overflowing) features for {len(bad)} of {len(items)} "
                                f"{split} images (e.g. {items[bad[0]].path}): its weights or BatchNorm statistics hold "
                                "NaN or inf or have exploded (a diverged run?); evaluate an earlier checkpoint")


def evaluate_model(model: torch.nn.Module, dataset: ReIDDataset, cfg, device: torch.device) -> Dict[str, float]:
    """Extract query/gallery features and run the dataset's protocol (``dataset.protocol``).

    Returns the protocol's metric dict (fractions in [0, 1]) plus ``eval_seconds``.
    """
    from esreid.data.loader import build_test_loader
    from esreid.data.transforms import TestTransform
    from esreid.evaluation.protocols import PROTOCOLS

    start = time.perf_counter()
    transform = TestTransform(cfg.data)

    def run(items: Sequence[ImageItem]):
        if not items:
            return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        loader = build_test_loader(cfg.data, items)
        return extract_features(model, loader, device, transform, cfg.solver.amp)

    qf, q_pids, q_camids = run(dataset.query)
    gf, g_pids, g_camids = run(dataset.gallery)
    for split, feats in (("query", qf), ("gallery", gf)):
        check_finite(feats, getattr(dataset, split), split)
    protocol = PROTOCOLS.get(dataset.protocol)
    metrics = protocol(qf, q_pids.numpy(), q_camids.numpy(), gf, g_pids.numpy(), g_camids.numpy(),
                       metric=model.retrieval.metric, ap_mode=cfg.test.ap_mode, rerank=cfg.test.rerank,
                       ranks=tuple(cfg.test.ranks), **cfg.test.protocol_args)
    metrics = dict(metrics)
    metrics["eval_seconds"] = time.perf_counter() - start
    return metrics
