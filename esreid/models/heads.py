"""Reusable heads: a feature map ``(B, C, h, w)`` -> :class:`HeadOutput` (the one output type of every head).

=====================  ==========================================================  ==================  ==============
head                   computation                                                 metric feature      retrieval
=====================  ==========================================================  ==================  ==============
:class:`BNNeckHead`    pool -> f_t -> BatchNorm1d (bias frozen at 0) -> f_i;        f_t (pre-BN)        f_i (post-BN)
                       bias-free Linear(C -> N) on f_i (BoT, docs/methods.md §0)
:class:`ReductionHead` pool -> Linear(C -> D) + BatchNorm1d + ReLU -> g;             g                   g
                       Linear(D -> N) on g (BDB / PMM, docs/methods.md §2.1, §3.1)
:class:`LinearHead`    pool -> f; Linear(C -> N) with bias on f (IDE, torchreid's      f                   f
                       ``resnet50``)
=====================  ==========================================================  ==================  ==============

The pooling is any :class:`~esreid.models.pooling.Pool` (GAP, GMP, GeM, P-pooling): a "GMP head" is a
``ReductionHead`` or ``BNNeckHead`` built with GMP. Losses read a head's output through
:func:`esreid.losses.branch_losses` (CE on ``logits``, triplet on ``metric``).
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Set

from torch import Tensor, nn

from esreid.models.pooling import Pool


class HeadOutput(NamedTuple):
    """What a head returns.

    metric: ``(B, D_m)`` the feature the metric (triplet) loss sees;
    feature: ``(B, D)`` the retrieval feature (what the evaluator ranks with, before the model's retrieval rule);
    logits: ``(B, N)`` identity logits in train mode, ``None`` in eval mode (no classifier work at test time).
    """

    metric: Tensor
    feature: Tensor
    logits: Optional[Tensor]


class Head(nn.Module):
    """Base of the heads: owns the pooling and reports its weight-decay exclusions and statistics."""

    def __init__(self, pool: Pool):
        super().__init__()
        self.pool = pool

    def no_weight_decay(self) -> Set[str]:
        """Parameter names (relative to the head) excluded from weight decay: a learnable pooling exponent."""
        return {f"pool.{n}" for n in self.pool.no_weight_decay()}

    def lr_multipliers(self) -> Dict[str, float]:
        """Parameter names (relative to the head) -> multiplier of ``solver.lr``: a pooling exponent's own lr."""
        return {f"pool.{n}": m for n, m in self.pool.lr_multipliers().items()}

    def stats(self) -> Dict[str, float]:
        """Values to log (the pooling exponent of GeM / P-pooling)."""
        return self.pool.stats()


class BNNeckHead(Head):
    """BoT's BNNeck (docs/methods.md §0): ``f_t = pool(x)`` (B, C) -> ``BatchNorm1d`` with weight 1 and bias frozen at
    0 -> ``f_i`` (B, C) -> ``Linear(C, N, bias=False)`` initialised N(0, 0.001) -> logits (B, N).

    Triplet on the pre-BN ``f_t``, cross-entropy on the logits of the post-BN ``f_i``; ``f_i`` is the test feature.
    ``affine=False`` gives a BN without weight and bias (AELM's test-feature BN, whose output trains nothing).
    """

    def __init__(self, pool: Pool, channels: int, num_classes: int, classifier: bool = True):
        super().__init__(pool)
        self.bn = nn.BatchNorm1d(channels)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)  # no shift (BoT): the bias stays 0
        self.classifier = nn.Linear(channels, num_classes, bias=False) if classifier else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def neck(self, f_t: Tensor) -> HeadOutput:
        """The head from the pooled feature on: ``f_t`` (B, C) -> :class:`HeadOutput`."""
        f_i = self.bn(f_t)
        logits = self.classifier(f_i) if self.training and self.classifier is not None else None
        return HeadOutput(f_t, f_i, logits)

    def forward(self, x: Tensor) -> HeadOutput:
        return self.neck(self.pool(x))


def kaiming_init(module: nn.Module, linear_fan: str = "fan_out") -> None:
    """BDB's init of new head layers (docs/methods.md §2.1), also PMM's (§3.1): Kaiming-normal weights (``fan_in``
    for convolutions, ``linear_fan`` for Linear layers), BatchNorm weights ~ N(1, 0.02), every bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode=linear_fan if isinstance(m, nn.Linear) else "fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ReductionHead(Head):
    """BDB / PMM reduction head (docs/methods.md §2.1, §3.1): ``pool(x)`` (B, C) -> ``Linear(C, D)`` +
    ``BatchNorm1d(D)`` + ReLU -> ``g`` (B, D) -> ``Linear(D, N)`` -> logits. Triplet on ``g``, CE on the logits, ``g``
    is the test feature.

    BDB's global branch and PMM's stage I apply the reduction as a 1x1 convolution to the ``(B, C, 1, 1)`` GAP map
    followed by BatchNorm2d: the same function as Linear + BatchNorm1d here (BatchNorm2d on a 1x1 map normalises each
    channel over the batch), with the convolution's Kaiming ``fan_in`` init (``reduction_fan="fan_in"``); their GMP
    branches use Linear layers with ``fan_out``. The classifier always gets ``fan_out`` (BDB's code).
    """

    def __init__(self, pool: Pool, channels: int, dim: int, num_classes: int, reduction_fan: str = "fan_out"):
        super().__init__(pool)
        self.reduction = nn.Sequential(nn.Linear(channels, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(dim, num_classes)
        kaiming_init(self.reduction, reduction_fan)
        kaiming_init(self.classifier)

    def forward(self, x: Tensor) -> HeadOutput:
        g = self.reduction(self.pool(x))  # (B, D); flatten-free: pooling already returns (B, C) at any batch size
        return HeadOutput(g, g, self.classifier(g) if self.training else None)


class LinearHead(Head):
    """IDE's head (Zheng et al., "Person Re-identification: Past, Present and Future", 2016; torchreid's
    ``resnet50``): ``f = pool(x)`` (B, C) is both the metric and the retrieval feature, ``Linear(C, N)`` (with bias,
    PyTorch's default init) gives the logits."""

    def __init__(self, pool: Pool, channels: int, num_classes: int):
        super().__init__(pool)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> HeadOutput:
        f = self.pool(x)
        return HeadOutput(f, f, self.classifier(f) if self.training else None)


def classifier_logits(head: Head, out: HeadOutput) -> Tensor:
    """Identity logits of a head's output in any mode (Grad-CAM of the true-ID logit needs them in eval mode)."""
    return out.logits if out.logits is not None else head.classifier(out.feature)

