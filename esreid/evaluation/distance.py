"""Pairwise distances between feature sets, computed block by block, and the tie rule shared by the evaluation code.

Conventions (the ones torchreid uses):

* ``cosine``: ``d(q, g) = 1 - <q, g> / (||q|| ||g||)``;
* ``euclidean``: the *squared* Euclidean distance ``||q||^2 + ||g||^2 - 2 <q, g>`` (clamped at 0). Squaring does not
  change any ranking, and it is what torchreid / BoT / AGW call "euclidean".

Half-precision features (float16 / bfloat16) are promoted to float32 before any arithmetic; float64 stays float64.

Tie rule: items at exactly the same distance are ordered by their index (what a *stable* argsort gives, and what the
reference implementations get with ``np.argsort(kind="stable")``). :func:`order_within_rows` and :func:`smallest_k`
implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from esreid.registry import Registry

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]


@dataclass(frozen=True)
class Prepared:
    """Features ready for :meth:`Metric.distance`: ``feats`` ``(N, D)`` float32/64, ``sqnorm`` ``(N,)`` or None."""

    feats: torch.Tensor
    sqnorm: Optional[torch.Tensor]

    def __len__(self) -> int:
        return self.feats.shape[0]

    def rows(self, start: int, end: int) -> Prepared:
        return Prepared(self.feats[start:end], None if self.sqnorm is None else self.sqnorm[start:end])

    def take(self, idx: torch.Tensor) -> Prepared:
        return Prepared(self.feats[idx], None if self.sqnorm is None else self.sqnorm[idx])


@dataclass(frozen=True)
class Metric:
    prepare: Callable[[torch.Tensor], Prepared]
    distance: Callable[[Prepared, Prepared], torch.Tensor]  # (Nq, D), (Ng, D) -> (Nq, Ng)
    paired: Callable[[Prepared, Prepared], torch.Tensor]  # (P, D), (P, D) -> (P,): distance of row i to row i


METRICS = Registry("distance metric")


def _cosine_distance(q: Prepared, g: Prepared) -> torch.Tensor:
    one = torch.ones((), dtype=q.feats.dtype, device=q.feats.device)
    return torch.addmm(one, q.feats, g.feats.T, alpha=-1.0)  # 1 - cos, one pass


def _sq_euclidean_distance(q: Prepared, g: Prepared) -> torch.Tensor:
    d = torch.addmm(g.sqnorm[None, :], q.feats, g.feats.T, alpha=-2.0)
    return d.add_(q.sqnorm[:, None]).clamp_min_(0.0)


METRICS.register("cosine")(Metric(
    prepare=lambda x: Prepared(F.normalize(x, dim=1), None),
    distance=_cosine_distance,
    paired=lambda a, b: 1.0 - (a.feats * b.feats).sum(1),
))
METRICS.register("euclidean")(Metric(
    prepare=lambda x: Prepared(x, (x * x).sum(1)),
    distance=_sq_euclidean_distance,
    paired=lambda a, b: (a.sqnorm + b.sqnorm - 2.0 * (a.feats * b.feats).sum(1)).clamp_min(0.0),
))


def as_features(x: ArrayLike, name: str, device: Optional[torch.device] = None) -> torch.Tensor:
    """``x`` as a 2-D floating tensor on ``device``; float16/bfloat16 are promoted to float32."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, (np.ndarray, torch.Tensor)) else x)
    if t.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) feature array, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected floating-point features, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.promote_types(t.dtype, torch.float32))


def prepare(x: ArrayLike, metric: str, name: str = "features", device: Optional[torch.device] = None) -> Prepared:
    """Convert and (for cosine) L2-normalise features once, before chunked distance computations."""
    return METRICS.get(metric).prepare(as_features(x, name, device))


def pairwise_distance(q: ArrayLike, g: ArrayLike, metric: str = "cosine") -> torch.Tensor:
    """Full ``(Nq, Ng)`` distance matrix (small problems, tests; the evaluator works chunk by chunk instead)."""
    m = METRICS.get(metric)
    qt, gt = as_features(q, "qf"), as_features(g, "gf")
    if qt.shape[1] != gt.shape[1]:
        raise ValueError(f"qf has dimension {qt.shape[1]} but gf has {gt.shape[1]}")
    return m.distance(m.prepare(qt), m.prepare(gt))


def order_within_rows(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Permutation sorting entries by ``rows`` (non-decreasing on input) then ``values``; ties keep the input order.

    Given entries listed in (row, column) order -- what ``nonzero`` returns -- this yields (row, value, column) order:
    the stable, ties-by-index ranking of each row. Up to 32-bit floats it is one stable sort of an int64 key
    ``row << 32 | u32(value)`` (``u32`` an order-preserving map of the float bits; -0.0 is folded onto +0.0 first, as
    it compares equal); float64 values take two stable sorts (by value, then by row).
    """
    if values.dtype == torch.float64:
        order = torch.sort(values, stable=True).indices
        return order[torch.sort(rows[order], stable=True).indices]
    bits = (values.float() + 0.0).view(torch.int32).long()  # + 0.0 turns -0.0 into +0.0
    u32 = torch.where(bits < 0, -1 - bits, bits + 2**31)  # negative floats: larger magnitude -> smaller key
    return torch.sort((rows << 32) | u32, stable=True).indices


def smallest_k(d: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(N, k)`` of the ``k`` smallest entries of each row of ``d`` ``(N, M)``, ascending, ties by index.

    ``torch.topk`` finds the k-th value; every entry not larger than it is then ordered exactly with
    :func:`order_within_rows`
    (there are at least ``k`` per row, more only when there are ties at the k-th value).
    """
    if not 0 < k <= d.shape[1]:
        raise ValueError(f"k={k} must be in [1, {d.shape[1]}]")
    if torch.isnan(d).any():
        raise ValueError("distance matrix contains NaN")
    kth = torch.topk(d, k, dim=1, largest=False, sorted=True).values[:, -1:]
    rows, cols = (d <= kth).nonzero(as_tuple=True)  # row-major, so cols ascend within a row
    order = order_within_rows(rows, d[rows, cols])
    rows, cols = rows[order], cols[order]
    counts = torch.bincount(rows, minlength=d.shape[0])
    start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(rows.numel(), device=d.device) - start[rows]
    keep = pos < k
    return cols[keep].view(d.shape[0], k)
