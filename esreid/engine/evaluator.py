"""Feature extraction (flip averaging, per-branch L2 normalisation) and protocol evaluation of a model."""

from __future__ import annotations

import contextlib
import time
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from esreid.data.base import ImageItem, ReIDDataset


def autocast(device: torch.device, amp: str):
    """bf16/fp16 autocast context for ``device`` (``amp`` = none | bf16 | fp16)."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def combine_branches(branches: Sequence[torch.Tensor], normalize: bool) -> torch.Tensor:
    """Concatenate per-branch features ``[(B, D_i)]`` -> ``(B, ΣD_i)``, L2-normalising each branch first
    (ES-Net §1.7 / spec §7 #9: per-branch L2, then concatenation)."""
    if normalize:
        branches = [F.normalize(b.float(), dim=1) for b in branches]
    return torch.cat([b.float() for b in branches], dim=1)


class RetrievalModel(torch.nn.Module):
    """A model in eval mode returning the retrieval feature: ``(B, 3, H, W)`` normalised -> ``(B, ΣD_i)`` float32.

    Optional flip-sum per branch, then :func:`combine_branches` (ES-Net §1.7: per-branch L2, then concatenation).
    Used by the evaluator and exported as is to ONNX.
    """

    def __init__(self, model: torch.nn.Module, flip: bool, normalize: bool):
        super().__init__()
        self.model, self.flip, self.normalize = model, flip, normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        branches = [b.float() for b in self.model(images)]
        if self.flip:
            branches = [b + f.float() for b, f in zip(branches, self.model(torch.flip(images, dims=[3])))]
        return combine_branches(branches, self.normalize)


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader, device: torch.device, transform, flip: bool = True,
                     normalize: bool = True, amp: str = "none") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` in eval mode over ``loader``.

    Returns:
        feats (N, D) float32 on the CPU, pids (N,), camids (N,), in loader order. With ``flip`` each branch's feature
        is the sum of the original and the horizontally flipped image's feature (ES-Net: "left-right flipping is also
        utilised in the testing stage").
    """
    was_training = model.training
    model.eval()
    net = RetrievalModel(model, flip, normalize)
    feats: List[torch.Tensor] = []
    pids: List[torch.Tensor] = []
    camids: List[torch.Tensor] = []
    try:
        for batch in loader:
            images = transform(batch["images"].to(device, non_blocking=True))
            with autocast(device, amp):
                feats.append(net(images).cpu())
            pids.append(batch["pids"])
            camids.append(batch["camids"])
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(pids), torch.cat(camids)


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
        return extract_features(model, loader, device, transform, cfg.test.flip, cfg.test.normalize, cfg.solver.amp)

    qf, q_pids, q_camids = run(dataset.query)
    gf, g_pids, g_camids = run(dataset.gallery)
    protocol = PROTOCOLS.get(dataset.protocol)
    metrics = protocol(qf, q_pids.numpy(), q_camids.numpy(), gf, g_pids.numpy(), g_camids.numpy(),
                       metric=cfg.test.metric, ap_mode=cfg.test.ap_mode, rerank=cfg.test.rerank,
                       ranks=tuple(cfg.test.ranks), **cfg.test.protocol_args)
    metrics = dict(metrics)
    metrics["eval_seconds"] = time.perf_counter() - start
    return metrics
