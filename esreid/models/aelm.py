"""AELM, Adversarially Erased Learning Module (Liu et al., IJCNN 2019) - a RECONSTRUCTION, not a reproduction.

Only the paper's abstract was available. Everything below follows docs/methods.md §4 and §7 #21, which rebuild the
method from ACoL (Zhang et al., CVPR 2018), the design the abstract describes; head design, CoAM form, δ, insertion
points, losses, test feature and recipe are all unverified against the paper.

At every insertion point p (default: the outputs of ``layer3`` and ``layer4``) one CoAM -> AELM module is applied
as a side module to the trunk's output map F (B, C_p, h, w):

    F ─ CoAM (CBAM form) ─ F'' ─┬─ head A: Conv1x1(C_p→N) ─ S^A (B, N, h, w) ─ spatial mean ─ z^A        CE
                                │          H = S^A_y, min-max per image ─ Ĥ ─ E = 1[Ĥ >= δ] (constant)
                                ├─ F'' ⊙ (1 - E) ─ head B: Conv1x1(C_p→N) ─ S^B ─ spatial mean ─ z^B  CE
                                └─ GAP ─ f_t (B, C_p) ─ BN ─ f_i (test feature)                      triplet on f_t

Reading chosen for the mid-level point (docs/methods.md §4, an ambiguity the abstract leaves): the trunk is never
modified. ``layer4`` consumes the raw ``layer3`` output, neither the CoAM-attended nor the erased map, so erasing only
acts on the AELM heads of its own insertion point and the ImageNet-pretrained ``layer4`` sees the input it was
trained on. The abstract's
"cascaded into one module which is applied to the outputs of different convolutional layers" reads as side modules.

Train: ``forward_train(images (B, 3, H, W), pids (B,))`` -> per insertion point p ``{p_ce, p_triplet, p_erased_ce}``
(docs/methods.md §4.3 ``L_AELM = CE(z^A) + CE(z^B)`` per point, + batch-hard triplet on the pooled features [infer];
weights, margin and label smoothing from ``model.loss``). Eval: ``features(images)`` -> ``[f_i per insertion point]``,
each ``(B, C_p)``, no erasing and no heads (the evaluator L2-normalises each branch and concatenates).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from esreid.config import Invalid, ModelConfig, param
from esreid.losses import branch_losses
from esreid.models import MODELS
from esreid.models.backbones import STAGES, build_backbone
from esreid.models.base import ReIDModel, RetrievalRule
from esreid.models.heads import Head, HeadOutput
from esreid.models.pooling import GAP

POINTS = STAGES[1:]  # layer1 .. layer4


@dataclass
class AELMConfig(ModelConfig):
    """AELM reconstruction (docs/methods.md §4, §7 #21): every default is inferred from ACoL / CBAM, none read in the
    paper."""

    name: str = "aelm"
    # §4.3 mid + high level [infer]
    insertion_points: List[str] = param(factory=lambda: ["layer3", "layer4"], choices=POINTS, nonempty=True)
    erase_threshold: float = param(0.6, gt=0, lt=1)  # δ of E = 1[Ĥ >= δ]; ACoL's default (§4.3, unverified for AELM)
    attention_reduction: int = param(16, ge=1)  # r of the CoAM channel MLP (CBAM default, §4.2)
    spatial_kernel: int = param(7, ge=1, le=31)  # side of the CoAM spatial conv (CBAM default, §4.2)

    def check(self, cfg) -> None:
        super().check(cfg)
        points = list(self.insertion_points)
        if points != sorted(set(points), key=POINTS.index):
            raise Invalid("model.insertion_points", f"expected distinct stages in trunk order, got {points}")
        if self.spatial_kernel % 2 == 0:
            raise Invalid("model.spatial_kernel", f"expected an odd size (same-size map), got {self.spatial_kernel}")


class CoAM(nn.Module):
    """Complementary Attention Module, reconstructed in CBAM's sequential form (docs/methods.md §4.2; the paper's
    composition, parallel or sequential, is unknown). ``forward(F (B, C, h, w)) -> F'' (B, C, h, w)``:

        M_c = σ(MLP(GAP_s F) + MLP(GMP_s F))  (B, C, 1, 1),  F' = M_c ⊙ F
        M_s = σ(Conv_kxk([mean_c F'; max_c F']))  (B, 1, h, w),  F'' = M_s ⊙ F'

    The MLP is shared by both poolings: Linear(C→C/r)+ReLU+Linear(C/r→C), with biases (CBAM); the spatial conv has
    no bias and, unlike CBAM's code, no BatchNorm after it (§4.2 formula).
    """

    def __init__(self, channels: int, reduction: int, kernel: int):
        super().__init__()
        hidden = max(1, channels // reduction)  # at least one hidden unit for tiny test backbones
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        m_c = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))  # (B, C) channel attention
        x = x * m_c[:, :, None, None]  # F'
        m_s = torch.sigmoid(self.spatial(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], 1)))
        return x * m_s  # F'' (B, C, h, w)


def class_heatmap(scores: Tensor, pids: Tensor, eps: float = 1e-6) -> Tensor:
    """IFCN class-specific heatmap (docs/methods.md §4.1): ``H = S^A_y`` min-max normalised per image, in float32.

    Args:
        scores: ``(B, N, h, w)`` class score maps ``S^A`` of head A.
        pids: ``(B,)`` class y of each image (the ground truth in training).
    Returns:
        ``Ĥ = (H - min H) / (max H - min H + eps)`` ``(B, h, w)`` in ``[0, 1)``; a flat map gives all zeros.
    """
    h = scores[torch.arange(len(pids), device=scores.device), pids].float()  # (B, h, w) S^A_y
    lo = h.flatten(1).amin(dim=1)[:, None, None]
    hi = h.flatten(1).amax(dim=1)[:, None, None]
    return (h - lo) / (hi - lo + eps)  # §4.1 min-max normalisation


def erase_mask(heat: Tensor, delta: float) -> Tensor:
    """AELM erasing mask (docs/methods.md §4.3): ``E = 1[Ĥ >= δ]``, ``(B, h, w)`` float, constant (no gradient).

    Because of ``eps`` in :func:`class_heatmap` a location with exactly ``(H - min) / (max - min) = δ`` falls just
    below δ; the maximum itself is erased for every ``δ < 1 - eps / (max - min)``.
    """
    return (heat.detach() >= delta).to(heat.dtype)


class AELMHead(Head):
    """CoAM -> AELM at one insertion point (module docstring). Two IFCN heads ``Conv1x1(C→N)`` with ACoL's init
    (Xavier-uniform weights, bias 0, docs/methods.md §4.1) and the BN of the test feature.

    The BN is BNNeck's without its classifier and without affine parameters: AELM's identity losses are the IFCN
    heads on the map, so nothing downstream of ``f_i`` is trained and BoT's weight 1 / bias 0 stay fixed.
    """

    def __init__(self, channels: int, num_classes: int, cfg: AELMConfig):
        super().__init__(GAP())
        self.attention = CoAM(channels, cfg.attention_reduction, cfg.spatial_kernel)
        self.head_a = nn.Conv2d(channels, num_classes, 1)
        self.head_b = nn.Conv2d(channels, num_classes, 1)
        for conv in (self.head_a, self.head_b):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.bn = nn.BatchNorm1d(channels, affine=False)
        self.delta = cfg.erase_threshold

    def forward(self, x: Tensor) -> HeadOutput:
        """Eval: ``x (B, C, h, w)`` -> ``f_t = GAP(CoAM(x))``, ``f_i = BN(f_t)`` (the test feature), no erasing."""
        f_t = self.pool(self.attention(x))
        return HeadOutput(f_t, self.bn(f_t), None)

    def forward_train(self, x: Tensor, pids: Tensor) -> Tuple[HeadOutput, Tensor, Tensor]:
        """Training: ``x (B, C, h, w)``, ``pids (B,)`` -> (``HeadOutput(f_t (B, C), f_i (B, C), z^A (B, N))``,
        ``z^B (B, N)`` the logits of head B on the erased map, ``E (B, h, w)`` the erase mask). The BN's running
        statistics are updated, as the test feature's BN must learn them."""
        f = self.attention(x)  # F'' (§4.2)
        f_t = self.pool(f)  # (B, C) pooled feature, triplet input
        f_i = self.bn(f_t)
        s_a = self.head_a(f)  # S^A (B, N, h, w) (§4.1)
        erased = erase_mask(class_heatmap(s_a, pids), self.delta)  # E (B, h, w), constant (§4.3)
        z_b = self.head_b(f * (1 - erased)[:, None]).mean(dim=(2, 3))  # z^B = GAP(W_B ∗ (F'' ⊙ (1 - E))) (§4.3)
        return HeadOutput(f_t, f_i, s_a.mean(dim=(2, 3))), z_b, erased  # z^A = mean_{u,v} S^A (§4.1)


@MODELS.register("aelm", config=AELMConfig)
class AELM(ReIDModel):
    """AELM reconstruction. Train: ``forward_train(images, pids)`` -> ``{<p>_ce, <p>_triplet, <p>_erased_ce}`` per
    insertion point p. Eval: ``features(images)`` -> ``[f_i (B, C_p) per insertion point]``, post-BN."""

    def __init__(self, cfg: AELMConfig, num_classes: int, retrieval: Optional[RetrievalRule] = None):
        super().__init__(cfg, num_classes, retrieval)
        points = list(cfg.insertion_points)
        backbone = build_backbone(cfg.backbone, cfg.last_stride, cfg.pretrained)
        # stages after the deepest insertion point would get no gradient: the trunk stops there
        self.trunk = backbone.stages("stem", points[-1])
        self.points = nn.ModuleDict({p: AELMHead(backbone.channels[p], num_classes, cfg) for p in points})
        self.saliency_layer = f"trunk.{points[-1]}"
        self.erased_loss_cfg = dataclasses.replace(cfg.loss, triplet_weight=0.0)  # head B: CE only (§4.3)
        self._last: Dict[str, Tensor] = {}

    def forward_features(self, images: Tensor) -> Dict[str, Tensor]:
        """``images (B, 3, H, W)`` -> ``{p: output map of stage p}`` for the insertion points (raw trunk maps)."""
        maps = {}
        x = images
        for name, module in self.trunk.named_children():
            x = module(x)
            if name in self.points:
                maps[name] = x
        return maps

    def forward_head(self, maps: Dict[str, Tensor]) -> List[HeadOutput]:
        return [self.points[p](x) for p, x in maps.items()]

    def forward_train(self, images: Tensor, pids: Tensor) -> Dict[str, Tensor]:
        terms: Dict[str, Tensor] = {}
        for p, x in self.forward_features(images).items():
            out, z_b, erased = self.points[p].forward_train(x, pids)
            self._last[f"{p}_erased_fraction"] = erased.mean()
            terms.update(branch_losses(out, pids, self.cfg.loss, f"{p}_"))  # CE(z^A) + triplet
            erased = HeadOutput(out.metric, out.feature, z_b)
            terms.update(branch_losses(erased, pids, self.erased_loss_cfg, f"{p}_erased_"))  # CE(z^B)
        return terms

    def heads(self) -> Dict[str, Head]:
        return dict(self.points.items())

    def compile_regions(self) -> List[nn.Module]:
        """Each trunk stage and each insertion point's CoAM; the heads' erasing (class heatmaps, thresholds) stays
        eager (the training path calls :meth:`AELMHead.forward_train`, not the head itself)."""
        return [*self.trunk.children(), *(head.attention for head in self.points.values())]

    def stats(self) -> Dict[str, float]:
        """Fraction of each insertion point's map erased for head B in the last batch."""
        return {**{k: float(v) for k, v in self._last.items()}, **super().stats()}
