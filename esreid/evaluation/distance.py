"""Pairwise distances between feature sets, computed block by block, and the tie rule shared by the evaluation code.

Conventions (the ones torchreid uses):

* ``cosine``: ``d(q, g) = 1 - <q, g> / (||q|| ||g||)``;
* ``euclidean``: the *squared* Euclidean distance ``||q||^2 + ||g||^2 - 2 <q, g>`` (clamped at 0). Squaring does not
  change any ranking, and it is what torchreid / BoT / AGW call "euclidean".

Half-precision features (float16 / bfloat16) are promoted to float32 before any arithmetic; float64 stays float64.
Inputs may have any strides (slices, transposes, Fortran order, negative numpy strides): :class:`Rows` copies row
blocks to C-contiguous memory before any arithmetic, so every layout gives bit-identical results.

Tie rule: items at exactly the same distance are ordered by their index (what a *stable* argsort gives, and what the
reference implementations get with ``np.argsort(kind="stable")``). :func:`order_within_rows` and :func:`smallest_k`
implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from esreid.registry import Registry

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]


class Rows:
    """A 2-D numpy array or torch tensor of any strides, handed out as C-contiguous row blocks (no up-front copy).

    ``kind`` "features": floating dtypes only; float16 / bfloat16 rows come out as float32, float32 / float64 as they
    are. ``kind`` "distmat": floating or integer dtypes; rows come out as float32 (float16 / bfloat16 / float32, an
    exact conversion that keeps the order) or float64 (float64 and integers). :meth:`block` copies only the rows asked
    for, and only when their layout, dtype or device requires it: a C-contiguous block of the output dtype on the
    right device is returned as a view. Negative numpy strides (``np.flip``) and non-native byte order are fine.
    """

    def __init__(self, x: ArrayLike, name: str, kind: str = "features"):
        if not isinstance(x, (np.ndarray, torch.Tensor)):
            x = np.asarray(x)
        if x.ndim != 2:
            want = "(N, D) feature array" if kind == "features" else "(Nq, Ng) distance matrix"
            raise ValueError(f"{name}: expected a 2-D {want}, got shape {tuple(x.shape)}")
        dtype = x.dtype if isinstance(x, torch.Tensor) else _torch_dtype(x.dtype)
        if dtype is not None and dtype.is_floating_point:
            self.dtype = torch.promote_types(dtype, torch.float32)
        elif dtype is not None and kind == "distmat" and dtype != torch.bool and not dtype.is_complex:
            self.dtype = torch.float64
        else:
            want = ("floating-point features (float16, bfloat16, float32 or float64)" if kind == "features" else
                    "a float (16, 32 or 64-bit) or integer distance matrix")
            raise ValueError(f"{name}: expected {want}, got dtype {x.dtype}")
        self.data, self.name = x, name
        self.shape = tuple(x.shape)
        self.device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")

    def __len__(self) -> int:
        return self.shape[0]

    def block(self, start: int, end: int, device: Optional[torch.device] = None,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rows ``start:end`` as a C-contiguous ``(end - start, D)`` tensor of :attr:`dtype` on ``device``.

        A view when the rows already are one; otherwise a copy, written into ``out`` (a C-contiguous tensor of that
        shape, dtype and device) when given.
        """
        x = self.data[start:end]
        if isinstance(x, np.ndarray):
            if not (x.flags.c_contiguous and x.dtype.isnative):
                if out is not None and out.device.type == "cpu":
                    np.copyto(out.numpy(), x, casting="unsafe")  # any strides / byte order, converted on the way
                    return out
                x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
            x = torch.from_numpy(x)
        x = x.detach()
        device = x.device if device is None else torch.device(device)
        if x.dtype == self.dtype and x.device == device and x.is_contiguous():
            return x
        if out is None:
            out = empty(tuple(x.shape), self.dtype, device)
        return out.copy_(x)  # (x.to(memory_format=...) may keep a transposed layout)

    def copies(self, device: Optional[torch.device] = None) -> bool:
        """Whether :meth:`block` copies (the input is not C-contiguous, native, of :attr:`dtype`, on ``device``)."""
        x = self.data
        device = self.device if device is None else torch.device(device)
        if isinstance(x, np.ndarray):
            return not (x.flags.c_contiguous and x.dtype.isnative and _torch_dtype(x.dtype) == self.dtype
                        and device.type == "cpu")
        return not (x.is_contiguous() and x.dtype == self.dtype and x.device == device)


def _torch_dtype(dtype: np.dtype) -> Optional[torch.dtype]:
    """torch's equivalent of a real numeric numpy dtype; None for bool, complex, strings, objects, float128..."""
    try:
        return torch.from_numpy(np.zeros(0, dtype.newbyteorder("="))).dtype if dtype.kind in "fiu" else None
    except TypeError:
        return None


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

    def to(self, dtype: torch.dtype) -> Prepared:
        return Prepared(self.feats.to(dtype), None if self.sqnorm is None else self.sqnorm.to(dtype))


@dataclass(frozen=True)
class Metric:
    prepare: Callable[[torch.Tensor], Prepared]  # (N, D) -> prepared (differentiable: models use it too)
    distance: Callable[..., torch.Tensor]  # (Nq, D), (Ng, D), out=None -> (Nq, Ng)
    paired: Callable[[Prepared, Prepared], torch.Tensor]  # (P, D), (P, D) -> (P,): distance of row i to row i
    finite: Callable[[Prepared], torch.Tensor]  # a scalar, finite iff the rows' distances cannot be NaN
    copies: bool  # whether ``prepare`` writes new (N, D) features (memory accounting)


METRICS = Registry("distance metric")


def empty(shape: Tuple[int, ...], dtype: torch.dtype, device: Optional[torch.device] = None) -> torch.Tensor:
    """An uninitialised tensor; on CPU allocated through numpy (float32 / float64 / bool / int64), which asks Linux
    for transparent huge pages: filling a fresh 214 MB buffer took 337 ms from torch's allocator, 167 ms from numpy's
    and 107 ms when already mapped (page faults; median of 7, busy 2-core VM)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type != "cpu" or dtype not in (torch.float32, torch.float64, torch.bool, torch.int64):
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.empty(shape, dtype=torch.empty((), dtype=dtype).numpy().dtype))


def _normalise(x: torch.Tensor) -> Prepared:
    """``F.normalize(x, dim=1)``; bit for bit the same (norm, clamp, division) into a huge-page buffer when autograd
    does not record it."""
    if x.requires_grad and torch.is_grad_enabled():
        return Prepared(F.normalize(x, dim=1), None)
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12)
    return Prepared(torch.div(x, norm, out=empty(x.shape, x.dtype, x.device)), None)


def _cosine_distance(q: Prepared, g: Prepared, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    one = torch.ones((), dtype=q.feats.dtype, device=q.feats.device)
    return torch.addmm(one, q.feats, g.feats.T, alpha=-1.0, out=out)  # 1 - cos, one pass


def _sq_euclidean_distance(q: Prepared, g: Prepared, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    d = torch.addmm(g.sqnorm[None, :], q.feats, g.feats.T, alpha=-2.0, out=out)
    return d.add_(q.sqnorm[:, None]).clamp_min_(0.0)


METRICS.register("cosine")(Metric(
    prepare=_normalise,
    distance=_cosine_distance,
    paired=lambda a, b: 1.0 - (a.feats * b.feats).sum(1),
    finite=lambda p: p.feats.sum(),  # normalised: |entries| <= 1, so only NaN / inf make the sum non-finite
    copies=True,
))
METRICS.register("euclidean")(Metric(
    prepare=lambda x: Prepared(x, (x * x).sum(1)),
    distance=_sq_euclidean_distance,
    paired=lambda a, b: (a.sqnorm + b.sqnorm - 2.0 * (a.feats * b.feats).sum(1)).clamp_min(0.0),
    finite=lambda p: p.sqnorm.amax(),  # finite squared norms: every |<q, g>| is finite too (Cauchy-Schwarz)
    copies=False,
))


def prepare_rows(rows: Rows, metric: str, start: int, end: int, device: Optional[torch.device] = None) -> Prepared:
    """Rows ``start:end`` converted and (cosine) L2-normalised; ValueError if they hold NaN / inf (or overflow).

    Row blocks give bit-identical results to preparing the whole array: every step is row-wise on C-contiguous rows.
    """
    m = METRICS.get(metric)
    prepared = m.prepare(rows.block(start, end, device))
    if len(prepared) and not torch.isfinite(m.finite(prepared)):
        raise ValueError(f"{rows.name}: rows {start}..{end - 1} contain NaN or infinite values, or values so large "
                         "that their squares overflow")
    return prepared


def as_features(x: ArrayLike, name: str, device: Optional[torch.device] = None) -> torch.Tensor:
    """``x`` as one C-contiguous 2-D floating tensor on ``device``; float16/bfloat16 are promoted to float32."""
    rows = Rows(x, name)
    return rows.block(0, len(rows), device)


def prepare(x: ArrayLike, metric: str, name: str = "features", device: Optional[torch.device] = None) -> Prepared:
    """Convert and (for cosine) L2-normalise all features at once (re-ranking; the evaluator works in row blocks)."""
    rows = Rows(x, name)
    return prepare_rows(rows, metric, 0, len(rows), device)


def pairwise_distance(q: ArrayLike, g: ArrayLike, metric: str = "cosine") -> torch.Tensor:
    """Full ``(Nq, Ng)`` distance matrix (small problems, tests; the evaluator works chunk by chunk instead)."""
    m = METRICS.get(metric)
    qp, gp = prepare(q, metric, "qf"), prepare(g, metric, "gf")
    if qp.feats.shape[1] != gp.feats.shape[1]:
        raise ValueError(f"qf has dimension {qp.feats.shape[1]} but gf has {gp.feats.shape[1]}")
    return m.distance(qp, gp)


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
