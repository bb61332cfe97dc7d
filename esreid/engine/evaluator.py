"""Feature extraction (by the model's retrieval rule) and protocol evaluation of a model."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

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
def extract_features(model: torch.nn.Module, loader, device: torch.device, transform, amp: str = "none",
                     desc: str = "features", channels_last: bool = False
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` in eval mode over ``loader`` (a progress bar named ``desc`` on a terminal), batch by batch, under
    ``amp`` autocast (none | bf16 | fp16), with the images in channels_last memory format when ``channels_last`` (the
    model's format: :func:`esreid.engine.compile.place_model`).

    Returns:
        feats (N, D) float32 on the CPU (the model's retrieval vector; with a flip rule each branch's feature is the
        sum of the original and the horizontally flipped image's: "left-right flipping is also utilised in the
        testing stage", ES-Net §IV-A-2), pids (N,), camids (N,), in loader order.
    """
    from esreid.console import progress

    was_training = model.training
    model.eval()
    feats: List[torch.Tensor] = []
    pids: List[torch.Tensor] = []
    camids: List[torch.Tensor] = []
    try:
        for batch in progress(loader, desc):
            images = transform(batch["images"].to(device, non_blocking=True))
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
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


def extract_items(model: torch.nn.Module, items: Sequence[ImageItem], cfg, device: torch.device,
                  desc: str = "features") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`extract_features` of ``items`` with the test loader and transform of ``cfg``: feats (N, D), pids (N,),
    camids (N,) in item order; empty tensors for no items."""
    from esreid.data.loader import build_test_loader
    from esreid.data.transforms import TestTransform

    if not items:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return extract_features(model, build_test_loader(cfg.data, items), device, TestTransform(cfg.data),
                            cfg.solver.amp, desc, cfg.solver.channels_last)


@dataclass
class EvalFeatures:
    """Retrieval features of a dataset's test split: ``query`` and ``gallery`` are (feats (N, D), pids (N,),
    camids (N,)) in item order; ``seconds``: the extraction time."""

    query: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    gallery: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    seconds: float


def extract_test_features(model: torch.nn.Module, dataset: ReIDDataset, cfg, device: torch.device) -> EvalFeatures:
    """Query and gallery features of ``dataset`` by ``model``'s retrieval rule (what every protocol ranks)."""
    start = time.perf_counter()
    query = extract_items(model, dataset.query, cfg, device, "query features")
    gallery = extract_items(model, dataset.gallery, cfg, device, "gallery features")
    return EvalFeatures(query, gallery, time.perf_counter() - start)


def evaluate_features(features: EvalFeatures, dataset: ReIDDataset, cfg, metric: str,
                      ranks: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """The dataset's protocol (``dataset.protocol``) on extracted ``features`` with distance ``metric``, at
    ``ranks`` (default ``cfg.test.ranks``). Returns the protocol's metric dict (fractions in [0, 1]) plus
    ``eval_seconds`` (extraction and ranking)."""
    from esreid.evaluation.protocols import PROTOCOLS

    start = time.perf_counter()
    (qf, q_pids, q_camids), (gf, g_pids, g_camids) = features.query, features.gallery
    for split, feats in (("query", qf), ("gallery", gf)):
        check_finite(feats, getattr(dataset, split), split)
    protocol = PROTOCOLS.get(dataset.protocol)
    metrics = protocol(qf, q_pids.numpy(), q_camids.numpy(), gf, g_pids.numpy(), g_camids.numpy(),
                       metric=metric, ap_mode=cfg.test.ap_mode, rerank=cfg.test.rerank,
                       ranks=tuple(cfg.test.ranks if ranks is None else ranks), **cfg.test.protocol_args)
    metrics = {"protocol": dataset.protocol, **metrics}  # names the declaration of its metrics (metric_keys)
    metrics["eval_seconds"] = features.seconds + time.perf_counter() - start
    return metrics

