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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Union

from torch import Tensor, nn

from esreid.config import ModelConfig
from esreid.erasing.dropblock import BatchDropBlock
from esreid.losses import branch_losses
from esreid.models import MODELS
from esreid.models.backbones import build_backbone
from esreid.models.backbones.resnet import Bottleneck


@dataclass
class BDBConfig(ModelConfig):
    name: str = "bdb"
    drop_height_ratio: float = 0.33  # ρ_h: BDB code for persons (paper text recalled as 0.3, spec §7 #15)
    drop_width_ratio: float = 1.0  # ρ_w: persons 1.0; cars / CUB / SOP / In-Shop 0.5 (spec §2.2)
    global_dim: int = 512  # reduction of the global branch (Conv1x1 2048 -> 512)
    drop_dim: int = 1024  # reduction of the feature-dropping branch (Linear 2048 -> 1024)


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


@MODELS.register("bdb", config=BDBConfig)
class BDB(nn.Module):
    def __init__(self, cfg: BDBConfig, num_classes: int):
        super().__init__()
        for key in ("global_dim", "drop_dim"):
            if getattr(cfg, key) <= 0:
                raise ValueError(f"model.{key}: expected a positive integer, got {getattr(cfg, key)!r}")
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, cfg.last_stride, cfg.pretrained)
        c = self.backbone.out_channels
        if c % Bottleneck.expansion:
            raise ValueError(f"model.backbone: {cfg.backbone!r} gives {c} channels; BDB's drop-branch Bottleneck "
                             f"needs a multiple of {Bottleneck.expansion}")
        # Global branch: GAP -> Conv1x1(C -> 512, bias) + BN2d + ReLU -> g; classifier on g (spec §2.1).
        self.global_reduction = nn.Sequential(
            nn.Conv2d(c, cfg.global_dim, 1), nn.BatchNorm2d(cfg.global_dim), nn.ReLU(inplace=True)
        )
        self.global_classifier = nn.Linear(cfg.global_dim, num_classes)
        # Feature-dropping branch: a NEW Bottleneck(C, C/4) (PyTorch default init, not pretrained; ResNet-50:
        # Bottleneck(2048, 512)) -> Batch DropBlock -> GMP -> Linear(C -> 1024) + BN1d + ReLU -> d; classifier on d.
        self.drop_bottleneck = Bottleneck(c, c // Bottleneck.expansion)
        self.dropblock = BatchDropBlock(cfg.drop_height_ratio, cfg.drop_width_ratio)
        self.drop_reduction = nn.Sequential(
            nn.Linear(c, cfg.drop_dim), nn.BatchNorm1d(cfg.drop_dim), nn.ReLU(inplace=True)
        )
        self.drop_classifier = nn.Linear(cfg.drop_dim, num_classes)
        for head in (self.global_reduction, self.global_classifier, self.drop_reduction, self.drop_classifier):
            init_bdb(head)

    def forward(self, images: Tensor, pids: Optional[Tensor] = None) -> Union[Dict[str, Tensor], List[Tensor]]:
        if self.training and pids is None:
            raise ValueError("BDB in train mode needs pids: call model(images, pids) or model.eval()")
        x = self.backbone(images)  # (B, C, h, w), shared by both branches
        # flatten(1), never squeeze(): squeeze would also drop the batch dim at batch size 1 (spec §2.1 pitfall)
        g = self.global_reduction(x.mean(dim=(2, 3), keepdim=True)).flatten(1)  # GAP -> (B, 512)
        dropped = self.dropblock(self.drop_bottleneck(x))  # (B, C, h, w); identity in eval mode
        d = self.drop_reduction(dropped.amax(dim=(2, 3)))  # GMP -> (B, 1024)
        if not self.training:
            return [g, d]  # spec §2.1 test feature [g, d], post-ReLU
        terms = branch_losses(self.global_classifier(g), g, pids, self.cfg.loss, "global_")  # L_CE-LS(z_g) + L_tri(g)
        terms.update(branch_losses(self.drop_classifier(d), d, pids, self.cfg.loss, "drop_"))  # L_CE-LS(z_d) + L_tri(d)
        return terms
