"""PMM: Progressive Multi-stage feature Mix (Zhang, He, Sun, Li, ICASSP 2021), docs/methods.md §3.

    images ─ backbone (last stride 1) ─ X (B, C, h, w) ─┬─ GAP ─ Conv1x1(C->D)+BN2d+ReLU ─ g1 ─ Linear ─ z1   stage I
                                                         └─ Bottleneck(C, C/4) ─ P (B, C, h, w)
    stage II:  P2 = A-Hard-Mix(P, GradCAM(z1 -> X))  ─ GMP ─ Linear(C->D)+BN1d+ReLU ─ g2 ─ Linear ─ z2
    stage III: P3 = A-Hard-Mix(P, GradCAM(z2 -> P2)) ─ GMP ─ Linear(C->D)+BN1d+ReLU ─ g3 ─ Linear ─ z3

Stage III mixes the un-mixed P again; only its guidance changes (the "progressive" part, docs/methods.md §3.1). C = 2048
and D = 512 for ResNet-50; C is taken from the backbone so tiny backbones work. Loss (docs/methods.md §3.4): L = sum_s [
triplet(g_s) + CE-LS(z_s) ] with the original labels, via ``branch_losses`` as ``s1_*``, ``s2_*``, ``s3_*`` (soft margin
and label smoothing come from ``model.loss``). Eval: no mixing, ``[g1, g2, g3]`` (post-ReLU, 3 x D).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from esreid.config import Invalid, LossConfig, ModelConfig, param
from esreid.erasing.gradcam import grad_cam, true_class_score
from esreid.erasing.hardmix import AttentiveHardMix
from esreid.losses import branch_losses
from esreid.models import MODELS
from esreid.models.backbones import build_backbone, feature_size, require_channels_multiple_of
from esreid.models.backbones.resnet import Bottleneck
from esreid.models.base import ReIDModel, RetrievalRule
from esreid.models.heads import Head, HeadOutput, ReductionHead
from esreid.models.pooling import GAP, GMP


@dataclass
class PMMConfig(ModelConfig):
    name: str = "pmm"
    reduction_dim: int = param(512, ge=1, le=65536)  # D of every stage (§3.1: 512 for stages II and III)
    block_size: List[int] = param(factory=lambda: [3, 2], length=2, ge=1)  # [bh, bw] cells per block (§3.3)
    top_k: int = param(3, ge=1)  # blocks replaced per image (§3.3)
    # PMM's losses (docs/methods.md §3.4, §7 #16): soft-margin batch-hard triplet + CE with label smoothing 0.1.
    loss: LossConfig = field(default_factory=lambda: LossConfig(label_smoothing=0.1, soft_margin=True))

    def check(self, cfg) -> None:
        super().check(cfg)
        require_channels_multiple_of(self, Bottleneck.expansion, "PMM's new part Bottleneck(C, C/4)")
        (h, w), (bh, bw) = feature_size(cfg.data.height, cfg.data.width, "layer4", self.last_stride), self.block_size
        if h % bh or w % bw:
            raise Invalid("model.block_size", f"the {h}x{w} layer4 map of {cfg.data.height}x{cfg.data.width} images "
                                              f"is not a multiple of the {bh}x{bw} block (e.g. 3x2 for 24x8 at "
                                              "384x128): choose a block size that divides it")
        if self.top_k > (h // bh) * (w // bw):
            raise Invalid("model.top_k", f"{self.top_k} blocks requested but the map has only "
                                         f"{(h // bh) * (w // bw)} blocks of {bh}x{bw}")


@MODELS.register("pmm", config=PMMConfig)
class PMM(ReIDModel):
    """PMM. Train: ``forward_train(images (B, 3, H, W), pids (B,))`` -> ``{s1_ce, s1_triplet, s2_ce, ..., s3_triplet}``.
    Eval: ``features(images)`` -> ``[g1, g2, g3]``, each (B, reduction_dim), no mixing."""

    default_retrieval = RetrievalRule(flip=False, normalize=False, metric="euclidean")  # docs/methods.md §3.1

    def __init__(self, cfg: PMMConfig, num_classes: int, retrieval: Optional[RetrievalRule] = None):
        super().__init__(cfg, num_classes, retrieval)
        self.backbone = build_backbone(cfg.backbone, cfg.last_stride, cfg.pretrained)
        c, d = self.backbone.out_channels, cfg.reduction_dim
        self.part = Bottleneck(c, c // Bottleneck.expansion)  # new, PyTorch default init (§2.1 / §3.1)
        # Stage I: GAP -> Conv1x1(C -> D) + BN + ReLU (BDB's global head); stages II / III: GMP -> Linear + BN + ReLU
        self.stage1 = ReductionHead(GAP(), c, d, num_classes, reduction_fan="fan_in")
        self.stage2 = ReductionHead(GMP(), c, d, num_classes)
        self.stage3 = ReductionHead(GMP(), c, d, num_classes)
        self.mix = AttentiveHardMix(cfg.block_size, cfg.top_k)

    def forward_features(self, images: Tensor) -> Tensor:
        return self.backbone(images)  # X (B, C, h, w)

    def forward_head(self, x: Tensor) -> List[HeadOutput]:
        """Eval path, no mixing: ``[g1, g2, g3]``, each (B, D) post-ReLU (§3.1)."""
        p = self.part(x)
        return [self.stage1(x), self.stage2(p), self.stage3(p)]

    def forward_train(self, images: Tensor, pids: Tensor) -> Dict[str, Tensor]:
        # The Grad-CAM guidance needs the graph even when a caller runs the training forward under no_grad
        # (e.g. the erased-loss probe).
        with torch.enable_grad():
            x = self.backbone(images)  # (B, C, h, w)
            o1 = self.stage1(x)  # stage I
            p = self.part(x)  # (B, C, h, w)
            p2, _ = self.mix(p, grad_cam(true_class_score(o1.logits, pids), x), pids)  # stage II guidance: z1 -> X
            o2 = self.stage2(p2)
            p3, _ = self.mix(p, grad_cam(true_class_score(o2.logits, pids), p2), pids)  # stage III guidance: z2 -> P2
            o3 = self.stage3(p3)
            terms: Dict[str, Tensor] = {}
            for s, out in enumerate((o1, o2, o3), start=1):
                terms.update(branch_losses(out, pids, self.cfg.loss, f"s{s}_"))  # §3.4
        return terms

    def heads(self) -> Dict[str, Head]:
        return {"s1": self.stage1, "s2": self.stage2, "s3": self.stage3}

    def generators(self) -> Dict[str, torch.Generator]:
        return {"hardmix": self.mix.generator}

    def compile_regions(self) -> List[nn.Module]:
        """Trunk, the part Bottleneck, the stage heads; Grad-CAM guidance and A-Hard-Mix (top-k blocks, partner
        draws) stay eager."""
        return [self.backbone, self.part, *super().compile_regions()]
