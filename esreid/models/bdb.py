"""BDB, Batch DropBlock Network (Dai et al., ICCV 2019; docs/methods.md §2): a global branch and a feature-dropping
branch on one trunk shared through ``layer4`` (last stride 1).

    images ─ trunk (stem .. layer4) ─ X ─┬─ GAP ─ Linear(C→512)+BN+ReLU ─ g (B, 512) ─ Linear(512→N)     CE-LS + tri
                                         └─ Bottleneck(C, C/4) ─ Batch DropBlock ─ GMP ─ Linear(C→1024)+BN+ReLU
                                            ─ d (B, 1024) ─ Linear(1024→N)                             CE-LS + tri

Both branch heads are :class:`~esreid.models.heads.ReductionHead` (the global one with BDB's 1x1-convolution init).
Train: ``forward_train(images (B, 3, H, W), pids (B,))`` -> ``{global_ce, global_triplet, drop_ce, drop_triplet}``
(§2.3 ``L = L_tri(g) + L_tri(d) + L_CE-LS(z_g) + L_CE-LS(z_d)``; weights, label smoothing and the soft margin come
from ``loss``). Eval: ``features(images)`` -> ``[g (B, 512), d (B, 1024)]``, post-ReLU (BDB's test feature; there is
no BNNeck). BDB's retrieval rule: the concatenation compared by Euclidean distance, no L2 normalisation, no flip.

``global_head: bnneck`` replaces the global branch by the BoT "Base" head, GAP ─ BNNeck (triplet on the pre-BN
f_t (B, C), CE on the logits of the post-BN f_i (B, C), test feature f_i): with a CE-only loss this is ES-Net's
"Base+Feature Dropping Branch" (Table V, docs/methods.md §7 #13); the drop branch is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from esreid.config import Invalid, ModelConfig, param
from esreid.erasing.dropblock import BatchDropBlock
from esreid.losses import branch_losses
from esreid.models import MODELS
from esreid.models.backbones import build_backbone, feature_size, require_channels_multiple_of
from esreid.models.backbones.resnet import Bottleneck
from esreid.models.base import ReIDModel, RetrievalRule
from esreid.models.heads import BNNeckHead, Head, HeadOutput, ReductionHead
from esreid.models.pooling import GAP, GMP


@dataclass
class BDBConfig(ModelConfig):
    name: str = "bdb"
    drop_height_ratio: float = param(0.33, gt=0, le=1)  # ρ_h: BDB code for persons (paper text recalled as 0.3, §7 #15)
    drop_width_ratio: float = param(1.0, gt=0, le=1)  # ρ_w: persons 1.0; cars / CUB / SOP / In-Shop 0.5 (§2.2)
    global_dim: int = param(512, ge=1, le=65536)  # reduction of the global branch (2048 -> 512)
    drop_dim: int = param(1024, ge=1, le=65536)  # reduction of the feature-dropping branch (2048 -> 1024)
    # reduction (BDB, uses global_dim) | bnneck (BoT Base: GAP -> BNNeck, docs/methods.md §7 #13)
    global_head: str = param("reduction", choices=("reduction", "bnneck"))

    def check(self, cfg) -> None:
        super().check(cfg)
        require_channels_multiple_of(self, Bottleneck.expansion, "the drop branch's new Bottleneck(C, C/4)")
        h, w = feature_size(cfg.data.height, cfg.data.width, "layer4", self.last_stride)
        rows, cols = round(self.drop_height_ratio * h), round(self.drop_width_ratio * w)
        if rows < 1 or cols < 1:
            raise Invalid("model.drop_height_ratio" if rows < 1 else "model.drop_width_ratio",
                          f"the dropped block would be {rows}x{cols} cells of the {h}x{w} layer4 map of "
                          f"{cfg.data.height}x{cfg.data.width} images: raise the ratio or the input size")


@MODELS.register("bdb", config=BDBConfig)
class BDB(ReIDModel):
    default_retrieval = RetrievalRule(flip=False, normalize=False, metric="euclidean")  # docs/methods.md §2.1

    def __init__(self, cfg: BDBConfig, num_classes: int, retrieval: Optional[RetrievalRule] = None):
        super().__init__(cfg, num_classes, retrieval)
        self.backbone = build_backbone(cfg.backbone, cfg.last_stride, cfg.pretrained)
        c = self.backbone.out_channels
        # Global branch: BDB's GAP -> Conv1x1(C -> 512) + BN + ReLU (§2.1) or BoT's GAP -> BNNeck.
        if cfg.global_head == "bnneck":
            self.global_head: Head = BNNeckHead(GAP(), c, num_classes)
        else:
            self.global_head = ReductionHead(GAP(), c, cfg.global_dim, num_classes, reduction_fan="fan_in")
        # Feature-dropping branch: a NEW Bottleneck(C, C/4) (PyTorch default init, not pretrained; ResNet-50:
        # Bottleneck(2048, 512)) -> Batch DropBlock -> GMP -> Linear(C -> 1024) + BN1d + ReLU -> d; classifier on d.
        self.drop_bottleneck = Bottleneck(c, c // Bottleneck.expansion)
        self.dropblock = BatchDropBlock(cfg.drop_height_ratio, cfg.drop_width_ratio)
        self.drop_head = ReductionHead(GMP(), c, cfg.drop_dim, num_classes)

    def forward_features(self, images: Tensor) -> Tensor:
        return self.backbone(images)  # X (B, C, h, w), shared by both branches

    def forward_head(self, x: Tensor) -> List[HeadOutput]:
        dropped = self.dropblock(self.drop_bottleneck(x))  # (B, C, h, w); identity in eval mode
        return [self.global_head(x), self.drop_head(dropped)]  # test feature [g, d] (§2.1)

    def forward_train(self, images: Tensor, pids: Tensor) -> Dict[str, Tensor]:
        g, d = self.forward_head(self.forward_features(images))
        terms = branch_losses(g, pids, self.cfg.loss, "global_")  # L_CE-LS(z_g) + L_tri(g)
        terms.update(branch_losses(d, pids, self.cfg.loss, "drop_"))  # L_CE-LS(z_d) + L_tri(d)
        return terms

    def heads(self) -> Dict[str, Head]:
        return {"global": self.global_head, "drop": self.drop_head}

    def generators(self) -> Dict[str, torch.Generator]:
        return {"dropblock": self.dropblock.generator}

    def compile_regions(self) -> List[nn.Module]:
        """Trunk, the drop branch's Bottleneck, the heads; Batch DropBlock (a region drawn per step) stays eager."""
        return [self.backbone, self.drop_bottleneck, *super().compile_regions()]

