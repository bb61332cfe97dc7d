"""BDB, Batch DropBlock Network (Dai et al., ICCV 2019; spec §2): a global branch and a feature-dropping branch on
one trunk shared through ``layer4`` (last stride 1).

    images ─ trunk (stem .. layer4) ─ X ─┬─ GAP ─ Conv1x1(C→512)+BN2d+ReLU ─ g (B, 512) ─ Linear(512→N)   CE-LS + tri
                                         └─ Bottleneck(C, C/4) ─ Batch DropBlock ─ GMP ─ Linear(C→1024)+BN1d+ReLU
                                            ─ d (B, 1024) ─ Linear(1024→N)                             CE-LS + tri

Train: ``model(images (B, 3, H, W), pids (B,))`` -> ``{global_ce, global_triplet, drop_ce, drop_triplet}``
(spec §2.3 ``L = L_tri(g) + L_tri(d) + L_CE-LS(z_g) + L_CE-LS(z_d)``; weights, label smoothing and the soft margin
come from ``loss``). Eval: ``model(images)`` -> ``[g (B, 512), d (B, 1024)]``, post-ReLU (BDB's test feature; not
post-BN as the other esreid models: there is no BNNeck). BDB compares the concatenation with Euclidean distance and
no L2 normalisation: configs set ``test.normalize: false``, ``test.metric: euclidean``, ``test.flip: false``.

``global_head: bnneck`` replaces the global branch by the BoT "Base" head, GAP ─ BNNeck (triplet on the pre-BN
f_t (B, C), CE on the logits of the post-BN f_i (B, C), test feature f_i): with a CE-only loss this is ES-Net's
"Base+Feature Dropping Branch" (Table V, spec §7 #13); the drop branch is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from torch import Tensor, nn

from esreid.config import ModelConfig
from esreid.erasing.dropblock import BatchDropBlock
from esreid.losses import branch_losses
from esreid.models import MODELS
from esreid.models.backbones import build_backbone
from esreid.models.backbones.resnet import Bottleneck
from esreid.models.neck import BNNeck


@dataclass
class BDBConfig(ModelConfig):
    name: str = "bdb"
    drop_height_ratio: float = 0.33  # ρ_h: BDB code for persons (paper text recalled as 0.3, spec §7 #15)
    drop_width_ratio: float = 1.0  # ρ_w: persons 1.0; cars / CUB / SOP / In-Shop 0.5 (spec §2.2)
    global_dim: int = 512  # reduction of the global branch (Conv1x1 2048 -> 512)
    drop_dim: int = 1024  # reduction of the feature-dropping branch (Linear 2048 -> 1024)
    global_head: str = "reduction"  # reduction (BDB, uses global_dim) | bnneck (BoT Base: GAP -> BNNeck, spec §7 #13)


def init_bdb(module: nn.Module) -> None:
    """BDB's init of the new heads (spec §2.1): kaiming-normal weights (``fan_out`` for Linear, ``fan_in`` for Conv),
    BatchNorm weight ~ N(1, 0.02), every bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ReductionHead(nn.Module):
    """BDB's global head (spec §2.1): GAP -> Conv1x1(C -> D, bias) + BN2d + ReLU -> g; classifier Linear(D -> N) on g.

    ``forward(x (B, C, h, w)) -> (g (B, D) triplet feature, g (B, D) test feature, logits (B, N) or None in eval)``.
    """

    def __init__(self, channels: int, dim: int, num_classes: int):
        super().__init__()
        self.reduction = nn.Sequential(nn.Conv2d(channels, dim, 1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(dim, num_classes)
        init_bdb(self)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        # flatten(1), never squeeze(): squeeze would also drop the batch dim at batch size 1 (spec §2.1 pitfall)
        g = self.reduction(x.mean(dim=(2, 3), keepdim=True)).flatten(1)  # GAP -> (B, D)
        return g, g, (self.classifier(g) if self.training else None)


class BNNeckHead(nn.Module):
    """The BoT "Base" head (spec §0): GAP -> f_t (B, C) -> BNNeck -> f_i (B, C), logits (B, N); BoT's own init
    (BNNeck: BN weight 1, classifier std 0.001), not BDB's. ``dim`` is unused: there is no reduction.

    ``forward(x (B, C, h, w)) -> (f_t (B, C) triplet feature, f_i (B, C) test feature, logits (B, N) or None)``.
    """

    def __init__(self, channels: int, dim: int, num_classes: int):
        super().__init__()
        self.neck = BNNeck(channels, num_classes)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        f_t = x.mean(dim=(2, 3))  # GAP
        f_i, logits = self.neck(f_t)
        return f_t, f_i, logits


GLOBAL_HEADS = {"reduction": ReductionHead, "bnneck": BNNeckHead}  # model.global_head


@MODELS.register("bdb", config=BDBConfig)
class BDB(nn.Module):
    def __init__(self, cfg: BDBConfig, num_classes: int):
        super().__init__()
        for key in ("global_dim", "drop_dim"):
            if getattr(cfg, key) <= 0:
                raise ValueError(f"model.{key}: expected a positive integer, got {getattr(cfg, key)!r}")
        if cfg.global_head not in GLOBAL_HEADS:
            raise ValueError(f"model.global_head: expected one of {sorted(GLOBAL_HEADS)}, got {cfg.global_head!r}")
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, cfg.last_stride, cfg.pretrained)
        c = self.backbone.out_channels
        if c % Bottleneck.expansion:
            raise ValueError(f"model.backbone: {cfg.backbone!r} gives {c} channels; BDB's drop-branch Bottleneck "
                             f"needs a multiple of {Bottleneck.expansion}")
        # Global branch: BDB's GAP -> Conv1x1(C -> 512) + BN2d + ReLU (spec §2.1) or BoT's GAP -> BNNeck.
        self.global_head = GLOBAL_HEADS[cfg.global_head](c, cfg.global_dim, num_classes)
        # Feature-dropping branch: a NEW Bottleneck(C, C/4) (PyTorch default init, not pretrained; ResNet-50:
        # Bottleneck(2048, 512)) -> Batch DropBlock -> GMP -> Linear(C -> 1024) + BN1d + ReLU -> d; classifier on d.
        self.drop_bottleneck = Bottleneck(c, c // Bottleneck.expansion)
        self.dropblock = BatchDropBlock(cfg.drop_height_ratio, cfg.drop_width_ratio)
        self.drop_reduction = nn.Sequential(
            nn.Linear(c, cfg.drop_dim), nn.BatchNorm1d(cfg.drop_dim), nn.ReLU(inplace=True)
        )
        self.drop_classifier = nn.Linear(cfg.drop_dim, num_classes)
        for head in (self.drop_reduction, self.drop_classifier):
            init_bdb(head)

    def forward(self, images: Tensor, pids: Optional[Tensor] = None) -> Union[Dict[str, Tensor], List[Tensor]]:
        if self.training and pids is None:
            raise ValueError("BDB in train mode needs pids: call model(images, pids) or model.eval()")
        x = self.backbone(images)  # (B, C, h, w), shared by both branches
        g_t, g, g_logits = self.global_head(x)  # triplet feature, test feature, logits (None in eval)
        dropped = self.dropblock(self.drop_bottleneck(x))  # (B, C, h, w); identity in eval mode
        d = self.drop_reduction(dropped.amax(dim=(2, 3)))  # GMP -> (B, 1024)
        if not self.training:
            return [g, d]  # spec §2.1 test feature [g, d], post-ReLU (bnneck head: g = f_i, post-BN)
        terms = branch_losses(g_logits, g_t, pids, self.cfg.loss, "global_")  # L_CE-LS(z_g) + L_tri(g)
        terms.update(branch_losses(self.drop_classifier(d), d, pids, self.cfg.loss, "drop_"))  # L_CE-LS(z_d) + L_tri(d)
        return terms
