"""PMM: Progressive Multi-stage feature Mix (Zhang, He, Sun, Li, ICASSP 2021), spec §3.

    images ─ backbone (last stride 1) ─ X (B, C, h, w) ─┬─ GAP ─ Conv1x1(C->D)+BN2d+ReLU ─ g1 ─ Linear ─ z1   stage I
                                                         └─ Bottleneck(C, C/4) ─ P (B, C, h, w)
    stage II:  P2 = A-Hard-Mix(P, GradCAM(z1 -> X))  ─ GMP ─ Linear(C->D)+BN1d+ReLU ─ g2 ─ Linear ─ z2
    stage III: P3 = A-Hard-Mix(P, GradCAM(z2 -> P2)) ─ GMP ─ Linear(C->D)+BN1d+ReLU ─ g3 ─ Linear ─ z3

Stage III mixes the un-mixed P again; only its guidance changes (the "progressive" part, spec §3.1). C = 2048 and
D = 512 for ResNet-50; C is taken from the backbone so tiny backbones work. Loss (spec §3.4):
L = sum_s [ triplet(g_s) + CE-LS(z_s) ] with the original labels, via ``branch_losses`` as ``s1_*``, ``s2_*``, ``s3_*``
(soft margin and label smoothing come from ``model.loss``). Eval: no mixing, ``[g1, g2, g3]`` (post-ReLU, 3 x D).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from esreid.config import LossConfig, ModelConfig
from esreid.erasing.gradcam import grad_cam, true_class_score
from esreid.erasing.hardmix import AttentiveHardMix
from esreid.losses import branch_losses
from esreid.models import MODELS
from esreid.models.backbones import build_backbone
from esreid.models.backbones.resnet import Bottleneck
from esreid.models.bdb import init_bdb  # PMM inherits BDB's init of the new heads (spec §3.1)
from esreid.models.pooling import GAP, GMP


@dataclass
class PMMConfig(ModelConfig):
    name: str = "pmm"
    reduction_dim: int = 512  # D of every stage (spec §3.1: 512 for stages II and III in the official file)
    block_size: List[int] = field(default_factory=lambda: [3, 2])  # [bh, bw] cells per A-Hard-Mix block (§3.3)
    top_k: int = 3  # blocks replaced per image (§3.3)
    # PMM's losses (spec §3.4, §7 #16): soft-margin batch-hard triplet + CE with label smoothing 0.1, unit weights.
    loss: LossConfig = field(default_factory=lambda: LossConfig(label_smoothing=0.1, soft_margin=True))


class Stage(nn.Module):
    """Pooling -> reduction -> g (B, D) -> classifier -> z (B, N). ``forward(map (B, C, h, w)) -> (g, z)``."""

    def __init__(self, pool: nn.Module, reduction: nn.Module, dim: int, num_classes: int):
        super().__init__()
        self.pool = pool
        self.reduction = reduction
        self.classifier = nn.Linear(dim, num_classes)
        init_bdb(self)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        g = self.reduction(self.pool(x))
        return g, self.classifier(g)


def global_stage(cin: int, dim: int, num_classes: int) -> Stage:
    """Stage I (spec §3.1): GAP -> Conv1x1(cin->dim)+BN2d+ReLU (on the (B, cin, 1, 1) map) -> g1."""
    reduction = nn.Sequential(
        nn.Unflatten(1, (cin, 1, 1)), nn.Conv2d(cin, dim, 1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True), nn.Flatten()
    )
    return Stage(GAP(), reduction, dim, num_classes)


def part_stage(cin: int, dim: int, num_classes: int) -> Stage:
    """Stages II / III (spec §3.1): GMP -> Linear(cin->dim)+BN1d+ReLU -> g."""
    reduction = nn.Sequential(nn.Linear(cin, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True))
    return Stage(GMP(), reduction, dim, num_classes)


@MODELS.register("pmm", config=PMMConfig)
class PMM(nn.Module):
    """PMM. Train: ``model(images (B, 3, H, W), pids (B,))`` -> ``{s1_ce, s1_triplet, s2_ce, ..., s3_triplet}``.
    Eval: ``model(images)`` -> ``[g1, g2, g3]``, each (B, reduction_dim)."""

    def __init__(self, cfg: PMMConfig, num_classes: int):
        super().__init__()
        if cfg.reduction_dim < 1:
            raise ValueError(f"model.reduction_dim: expected a positive integer, got {cfg.reduction_dim!r}")
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, cfg.last_stride, cfg.pretrained)
        c, d = self.backbone.out_channels, cfg.reduction_dim
        if c % Bottleneck.expansion:
            raise ValueError(f"model.backbone: PMM's part Bottleneck needs out_channels divisible by 4, got {c}")
        self.part = Bottleneck(c, c // Bottleneck.expansion)  # new, PyTorch default init (spec §2.1 / §3.1)
        self.stage1 = global_stage(c, d, num_classes)
        self.stage2 = part_stage(c, d, num_classes)
        self.stage3 = part_stage(c, d, num_classes)
        self.mix = AttentiveHardMix(cfg.block_size, cfg.top_k)

    def forward(self, images: Tensor, pids: Optional[Tensor] = None) -> Union[Dict[str, Tensor], List[Tensor]]:
        if not self.training:
            return self.features(images)
        if pids is None:
            raise ValueError("PMM: training forward needs pids (model(images, pids))")
        # The Grad-CAM guidance needs the graph even when a caller runs the training forward under no_grad
        # (e.g. the trainer's loss probe).
        with torch.enable_grad():
            x = self.backbone(images)  # (B, C, h, w)
            g1, z1 = self.stage1(x)  # stage I
            p = self.part(x)  # (B, C, h, w)
            p2, _ = self.mix(p, grad_cam(true_class_score(z1, pids), x), pids)  # stage II guidance: z1 -> X
            g2, z2 = self.stage2(p2)
            p3, _ = self.mix(p, grad_cam(true_class_score(z2, pids), p2), pids)  # stage III guidance: z2 -> P2
            g3, z3 = self.stage3(p3)
            terms: Dict[str, Tensor] = {}
            for s, (g, z) in enumerate(((g1, z1), (g2, z2), (g3, z3)), start=1):
                terms.update(branch_losses(z, g, pids, self.cfg.loss, f"s{s}_"))  # spec §3.4
        return terms

    def features(self, images: Tensor) -> List[Tensor]:
        """Eval features without mixing: ``[g1, g2, g3]``, each (B, D) post-ReLU (spec §3.1)."""
        x = self.backbone(images)
        p = self.part(x)
        return [self.stage1(x)[0], self.stage2(p)[0], self.stage3(p)[0]]
