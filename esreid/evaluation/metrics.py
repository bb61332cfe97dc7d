"""Exact CMC / mAP / mINP with the Market protocol, in query chunks, within a memory budget, without a per-query loop.

Definitions (docs/methods.md §0 (evaluation protocol), the torchreid / fast-reid ``eval_market1501`` semantics):

* for a query (pid p, camera c) gallery items with pid p AND camera c are *junk* and removed; everything else is kept
  (pid-0 distractors are ordinary negatives);
* kept items are ranked by ascending distance, ties by gallery index (stable argsort);
* with ``k_1 < ... < k_R`` the 1-based ranks of the R positives among the kept items:
  CMC(r) = [k_1 <= r];  AP ("anchor") = (1/R) sum_i i / k_i;  AP ("official", Market MATLAB trapezoid)
  = (1/R) sum_i ((i-1)/(k_i-1) + i/k_i) / 2, the first term being 1 when k_i = 1;  INP = R / k_R;
* queries with R = 0 are skipped (they enter no average) and counted in ``num_skipped_q``.

How it stays exact, fast and small: only the *ranks of the positives* are needed. Sort a query's positives by
(distance, gallery index); then k_i = i + the number of negatives ranked before the i-th positive, and only negatives
whose distance is <= that of the hardest positive (the *candidates*) can be. So, per chunk of queries: every
distance is compared once with its query's hardest-positive distance (a boolean mask, ~1 MiB of rows at a time, so
it stays in cache; the query's same-pid items -- positives and junk -- are cleared from it), the mask's ``nonzero``
lists the candidates, and one binary search places each candidate among its query's sorted positives (keys
``query << 32 | 32-bit order-preserving code of the distance``; equal distances are settled by gallery index). A
histogram of the places gives every k_i. The mask tells how many candidates each row has before they are listed, so
the rows are taken in groups whose candidate lists fit the budget -- down to one query at a time when a query ranks
much of the gallery before its hardest positive (random features).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from esreid.evaluation.distance import METRICS, ArrayLike, Prepared, Rows, empty, prepare_rows
from esreid.registry import Registry

AP_MODES = Registry("ap_mode")
AP_MODES.register("anchor")(lambda i, k: i / k)  # mean precision at each hit


@AP_MODES.register("official")
def _trapezoid_ap_term(i: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Market-1501 MATLAB ``compute_AP``: mean of the precisions just before and at the i-th hit."""
    prev = torch.where(k > 1, (i - 1) / (k - 1).clamp_min(1), torch.ones_like(i))
    return 0.5 * (prev + i / k)


# Memory model of one evaluation, in bytes (benchmarks/eval_memory.py measures the peak it gives):
BYTES_PER_CANDIDATE = 64  # peak while a group of rows' candidate list is placed (index, row, key, place, temporaries)
BYTES_PER_SAME_PID = 128  # per query and same-pid gallery item: the (c, M) label tables, sorted positives, stats
MASK_BYTES = 1 << 20  # the comparison mask covers ~1 MiB of a chunk's rows at a time
GALLERY_BLOCK = 1024  # the fewest gallery items per distance block when the prepared gallery is not kept
CMC_RANKS = 50  # the protocols report the CMC curve at ranks 1..50


@dataclass
class RankResult:
    """Market-protocol results. ``cmc[r]`` is the fraction of valid queries whose first match has rank <= r+1."""

    cmc: np.ndarray  # (max_rank,) float64
    mAP: float
    mINP: float
    num_valid_q: int
    num_skipped_q: int

    def as_dict(self, ranks: Sequence[int] = (1, 5, 10, 20)) -> Dict[str, float]:
        for r in ranks:
            if not 1 <= r <= len(self.cmc):
                raise ValueError(f"rank {r} is outside the computed CMC (max_rank={len(self.cmc)})")
        out = {"mAP": float(self.mAP), "mINP": float(self.mINP)}
        out.update({f"R{r}": float(self.cmc[r - 1]) for r in ranks})
        return out


@dataclass
class QueryStats:
    """Per-query results ``(Nq,)``: number of positives R, rank of the first / last positive (0 if R = 0), AP."""

    num_pos: np.ndarray
    first: np.ndarray
    last: np.ndarray
    ap: np.ndarray

    def valid(self) -> QueryStats:
        """The statistics of the queries with at least one positive (those every average is over)."""
        ok = self.num_pos > 0
        return QueryStats(self.num_pos[ok], self.first[ok], self.last[ok], self.ap[ok])


def as_ids(x: ArrayLike, name: str, n: Optional[int] = None) -> np.ndarray:
    """``x`` (pids or camera ids: numpy, torch or a list) as an int64 array ``(n,)``; ValueError naming ``name``."""
    a = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x)
    if a.ndim != 1 or (n is not None and len(a) != n):
        want = f"({n},)" if n is not None else "1-D"
        raise ValueError(f"{name}: expected an integer array of shape {want}, got shape {a.shape}")
    if len(a) and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected integers, got dtype {a.dtype}")
    return a.astype(np.int64)


class SamePid:
    """Gallery indices by pid: :meth:`table` gives, per query, the gallery items with its pid (ascending)."""

    def __init__(self, g_pids: np.ndarray):
        self.order = np.argsort(g_pids, kind="stable")
        self.sorted = g_pids[self.order]

    def _bounds(self, q_pids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        lo = np.searchsorted(self.sorted, q_pids, "left")
        return lo, np.searchsorted(self.sorted, q_pids, "right") - lo

    def width(self, q_pids: np.ndarray) -> int:
        """M: the largest number of gallery items any of ``q_pids`` has (at least 1)."""
        return max(int(self._bounds(q_pids)[1].max(initial=0)), 1)

    def table(self, q_pids: np.ndarray, width: int) -> np.ndarray:
        """``(Nq, width)`` gallery indices with each query's pid, ascending, -1 padding."""
        lo, n = self._bounds(q_pids)
        if len(self.order) == 0:
            return np.full((len(q_pids), width), -1, dtype=np.int64)
        cols = np.arange(width)[None, :]
        return np.where(cols < n[:, None], self.order[np.minimum(lo[:, None] + cols, len(self.order) - 1)], -1)


def same_pid_index(g_pids: np.ndarray, q_pids: np.ndarray) -> np.ndarray:
    """``(Nq, M)`` gallery indices with each query's pid (ascending, -1 padding); M = the largest such group."""
    same = SamePid(g_pids)
    return same.table(q_pids, same.width(q_pids))


class DistanceChunks:
    """Query-chunked distances from either a distance matrix or two feature sets, sized to ``memory_budget_mb``.

    Iterating yields ``(start, end, dist)``, ``dist`` the C-contiguous ``(end - start, Ng)`` float32 / float64
    distances on ``device`` (a reused buffer or a view of ``distmat``: valid until the next step). Inputs of any
    strides are read one block of rows at a time (:class:`~esreid.evaluation.distance.Rows`); the whole distance
    matrix never exists.

    The budget covers: the prepared gallery (its float copy, L2-normalised for cosine), the label tables,
    ``chunk_size`` rows of distances plus their prepared query rows, the comparison mask, and the candidate lists of
    :func:`rank_chunk`, which get what the chunk leaves: at least a quarter of the rest and never less than one
    query's worst case (all Ng gallery items), so that any features fit. A prepared gallery larger than half the
    budget is not kept: each chunk prepares it again, block by block (blocks of at least 1024 items), and computes
    its distances block by block: one more pass over the gallery features per chunk. :meth:`plan` sets
    ``chunk_size`` and ``max_candidates``; ValueError (naming the minimum) if the budget cannot hold one query.
    """

    def __init__(self, *, distmat=None, qf=None, gf=None, metric: str = "cosine", memory_budget_mb: float = 512,
                 chunk_size: Optional[int] = None, device=None):
        if (distmat is None) == (qf is None or gf is None):
            raise ValueError("pass either distmat=(Nq, Ng) or both qf=(Nq, D) and gf=(Ng, D)")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.memory_budget_mb, self.requested_chunk, self.metric = memory_budget_mb, chunk_size, metric
        self.source = Rows(distmat, "distmat", kind="distmat") if distmat is not None else Rows(qf, "qf")
        self.device = torch.device(device) if device is not None else self.source.device  # default: the inputs'
        self.num_q = len(self.source)
        self.gallery_rows, self.gallery, self.fixed_bytes, self.feature_bytes = None, None, 0, 0
        if distmat is not None:
            self.num_g, self.dist_dtype = self.source.shape[1], self.source.dtype
            self.check_nan = True
        else:
            self.gallery_rows = g = Rows(gf, "gf")
            if self.source.shape[1] != g.shape[1]:
                raise ValueError(f"qf has dimension {self.source.shape[1]} but gf has {g.shape[1]}")
            self.num_g, self.dist_dtype = len(g), torch.promote_types(self.source.dtype, g.dtype)
            self.check_nan = False  # finite features (checked when prepared) give NaN-free distances
            itemsize = torch.empty((), dtype=self.dist_dtype).element_size()
            copies = METRICS.get(metric).copies  # bytes per prepared row: the arrays preparing writes, its norm
            self.feature_bytes = itemsize * ((copies + self.source.copies(self.device)) * g.shape[1] + 1)
            g_bytes = itemsize * ((copies + g.copies(self.device)) * g.shape[1] + 1)
            budget = memory_budget_mb * 2**20
            if self.num_g * g_bytes <= budget / 2:  # keep the prepared gallery
                self.gallery = prepare_rows(g, metric, 0, self.num_g, self.device).to(self.dist_dtype)
                self.gallery_block = max(self.num_g, 1)
            else:  # prepare it block by block for every chunk
                self.gallery_block = max(GALLERY_BLOCK, int(budget / 8 // g_bytes))
            self.fixed_bytes = min(self.gallery_block, self.num_g) * g_bytes
        self.chunk_size = self.max_candidates = 0

    def plan(self, per_row_bytes: int = 0, fixed_bytes: int = 0) -> None:
        """Size the chunks and the candidate groups; the caller adds its own per-row and fixed label memory."""
        mask = min(MASK_BYTES, self.num_q * self.num_g)
        work = self.memory_budget_mb * 2**20 - self.fixed_bytes - fixed_bytes - mask
        itemsize = torch.empty((), dtype=self.dist_dtype).element_size()
        row = self.num_g * itemsize + self.feature_bytes + per_row_bytes
        one_query = max(self.num_g, 1) * BYTES_PER_CANDIDATE  # worst case: every gallery item is a candidate
        chunk = self.requested_chunk
        if chunk is None:
            chunk = int((work - max(work / 4, one_query)) // row)
            if chunk < 1:
                need = (self.memory_budget_mb * 2**20 - work + row + one_query) / 2**20
                raise ValueError(f"memory_budget_mb={self.memory_budget_mb} cannot hold one query against "
                                 f"{self.num_g} gallery items; it needs at least {need:.3g} MB")
        self.chunk_size = max(1, min(chunk, self.num_q))
        self.max_candidates = int(max(work - self.chunk_size * row, one_query) // BYTES_PER_CANDIDATE)

    def _gallery_blocks(self) -> Iterator[Tuple[int, int, Prepared]]:
        if self.gallery is not None:
            yield 0, self.num_g, self.gallery
            return
        for b0 in range(0, self.num_g, self.gallery_block):
            b1 = min(b0 + self.gallery_block, self.num_g)
            yield b0, b1, prepare_rows(self.gallery_rows, self.metric, b0, b1, self.device).to(self.dist_dtype)

    def __iter__(self) -> Iterator[Tuple[int, int, torch.Tensor]]:
        if not self.chunk_size:
            self.plan()
        buf = None
        distance = METRICS.get(self.metric).distance
        for s in range(0, self.num_q, self.chunk_size):
            e = min(s + self.chunk_size, self.num_q)
            if buf is None:
                buf = empty((min(self.chunk_size, self.num_q), self.num_g), self.dist_dtype, self.device)
            if self.gallery_rows is None:
                yield s, e, self.source.block(s, e, self.device, out=buf[: e - s])
                continue
            q = prepare_rows(self.source, self.metric, s, e, self.device).to(self.dist_dtype)
            for b0, b1, g in self._gallery_blocks():
                distance(q, g, out=buf[: e - s, b0:b1])
            yield s, e, buf[: e - s]


class _NumpyDense:
    """The dense per-pair steps on CPU, through numpy: its compare, count and ``flatnonzero`` ran 2.5x, 2x and 8x
    faster than torch's here (one thread, a Market-size chunk); the arrays are shared, not copied."""

    @staticmethod
    def less_equal(d: torch.Tensor, thr: torch.Tensor, out: torch.Tensor) -> None:
        np.less_equal(d.numpy(), thr.numpy()[:, None], out=out.numpy())

    @staticmethod
    def count(m: torch.Tensor) -> int:
        return int(np.count_nonzero(m.numpy()))

    @staticmethod
    def count_rows(m: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.count_nonzero(m.numpy(), axis=1).astype(np.int64))

    @staticmethod
    def flatnonzero(m: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.flatnonzero(m.numpy()))


class _TorchDense:
    """The same steps in torch, for accelerators."""

    @staticmethod
    def less_equal(d: torch.Tensor, thr: torch.Tensor, out: torch.Tensor) -> None:
        torch.le(d, thr[:, None], out=out)

    @staticmethod
    def count(m: torch.Tensor) -> int:
        return int(m.count_nonzero())

    @staticmethod
    def count_rows(m: torch.Tensor) -> torch.Tensor:
        return m.count_nonzero(1)

    @staticmethod
    def flatnonzero(m: torch.Tensor) -> torch.Tensor:
        return m.view(-1).nonzero().squeeze(1)


def dense_ops(device: torch.device):
    return _NumpyDense if device.type == "cpu" else _TorchDense


class SortCodes:
    """Order-preserving integer codes in [0, 2^32) for distances compared with the positives' distances ``pos``.

    Up to 32-bit floats: the float's bits mapped to an unsigned order (-0.0 folded onto +0.0, as it compares equal).
    float64: the place among the positives' distinct values (2l between values, 2l + 1 on one), which is all the
    comparisons with positives need.
    """

    def __init__(self, pos: torch.Tensor):
        self.levels = torch.unique(pos) if pos.dtype == torch.float64 else None  # sorted

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if self.levels is None:
            bits = (v.float() + 0.0).view(torch.int32).long()  # + 0.0 turns -0.0 into +0.0
            return bits.bitwise_xor_((bits >> 63) | 2**31)  # negative: ~bits (larger magnitude first); else + 2^31
        place = torch.searchsorted(self.levels, v)
        on = self.levels[place.clamp_max(len(self.levels) - 1)] == v
        return place.mul_(2).add_(on)


def _row_groups(dense, m: torch.Tensor, max_candidates: int) -> Iterator[Tuple[int, int]]:
    """Consecutive row ranges of mask ``m`` with at most ``max_candidates`` set entries (at least one row each)."""
    if dense.count(m) <= max_candidates:
        yield 0, m.shape[0]
        return
    cum = torch.cumsum(dense.count_rows(m), 0)
    g0 = 0
    while g0 < m.shape[0]:
        base = int(cum[g0 - 1]) if g0 else 0
        g1 = max(int(torch.searchsorted(cum, base + max_candidates, right=True)), g0 + 1)
        yield g0, g1
        g0 = g1


def _place(p_key: torch.Tensor, p_col: torch.Tensor, key: torch.Tensor, flat: torch.Tensor, num_g: int
           ) -> torch.Tensor:
    """Index into the sorted positives ``p_key`` of the first one ranked after each candidate negative ``key``.

    A positive with the same key (same query and distance) ranks first iff its gallery index is smaller; the
    candidates' gallery indices are ``flat % num_g`` (computed for the tied ones only: ties are rare).
    """
    place = torch.searchsorted(p_key, key)
    if not len(p_key):
        return place
    tie = (torch.take(p_key, place.clamp_max(len(p_key) - 1)) == key).nonzero().squeeze(1)
    if len(tie):
        n = torch.searchsorted(p_key, key[tie], right=True) - place[tie]  # tied positives, ascending index
        first = torch.repeat_interleave(place[tie], n)
        tied = first + torch.arange(len(first), device=key.device) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        before = p_col[tied] < torch.repeat_interleave(flat[tie] % num_g, n)
        place.index_add_(0, torch.repeat_interleave(tie, n), before.long())
    return place


def rank_chunk(dist: torch.Tensor, q_cams: torch.Tensor, g_cams: torch.Tensor, same_pid: torch.Tensor,
               ap_term: Callable, max_candidates: int = 2**62, check_nan: bool = True) -> QueryStats:
    """Market-protocol statistics for one chunk (the algorithm of the module docstring).

    Args:
        dist: ``(c, Ng)`` C-contiguous float32 / float64 distances; q_cams ``(c,)``, g_cams ``(Ng,)`` int64, on
            dist's device.
        same_pid: ``(c, M)`` gallery indices with the query's pid, ascending, -1 padding (:class:`SamePid`).
        ap_term: ``(i, k) -> contribution`` of the i-th hit at rank k (float64 tensors), an :data:`AP_MODES` entry.
        max_candidates: the most candidate negatives placed at once (rows are grouped to fit; one row may exceed it).
        check_nan: look for NaN in ``dist`` (ValueError), in the blocks the comparison reads anyway.
    """
    c, num_g, dev = dist.shape[0], dist.shape[1], dist.device
    valid = same_pid >= 0
    col = same_pid.clamp_min(0)
    pos = valid & (g_cams[col] != q_cams[:, None])  # junk = same pid AND same camera
    num_pos = pos.sum(1)
    pos_d = dist.gather(1, col)
    hardest = torch.where(pos, pos_d, -torch.inf).amax(1)
    hardest = torch.where(num_pos > 0, hardest, torch.nan)  # no positive: nothing to rank (NaN compares false)
    # the positives sorted by (query, distance, gallery index): nonzero is row-major and same_pid ascends in a row
    p_row, p_slot = pos.nonzero(as_tuple=True)
    codes = SortCodes(pos_d[p_row, p_slot])
    p_key = (p_row << 32) | codes(pos_d[p_row, p_slot])
    order = torch.sort(p_key, stable=True).indices
    p_key, p_row, p_col = p_key[order], p_row[order], col[p_row, p_slot][order]
    # hist[p_off[r] + r + b] counts the negatives of row r that rank after exactly b of its positives
    hist = torch.zeros(len(p_key) + c, dtype=torch.long, device=dev)
    dense = dense_ops(dev)
    rows_per_block = max(1, MASK_BYTES // max(num_g, 1))
    mask = empty((min(rows_per_block, c), num_g), torch.bool, dev)
    for a in range(0, c, rows_per_block):
        block, m = dist[a : a + rows_per_block], mask[: min(rows_per_block, c - a)]
        if check_nan and not torch.isfinite(block.sum()) and torch.isnan(block).any():  # the sum is NaN if any is
            raise ValueError("distmat: contains NaN distances")
        dense.less_equal(block, hardest[a : a + rows_per_block], out=m)
        vr, vs = valid[a : a + rows_per_block].nonzero(as_tuple=True)
        m[vr, col[a + vr, vs]] = False  # same-pid items (positives, junk) are not negatives
        for g0, g1 in _row_groups(dense, m, max_candidates):
            flat = dense.flatnonzero(m[g0:g1]).to(dev)  # (row, gallery index) of the candidates, row-major
            row = flat // num_g + (a + g0)
            key = codes(torch.take(block[g0:g1], flat)).bitwise_or_(row << 32)
            place = _place(p_key, p_col, key, flat, num_g)
            hist += torch.bincount(place.add_(row), minlength=len(hist))
    p_off = torch.cumsum(num_pos, 0) - num_pos
    t = torch.arange(len(p_key), device=dev)
    i = t - p_off[p_row]  # 0-based index of the positive within its query
    cs = torch.cat([hist.new_zeros(1), torch.cumsum(hist, 0)])
    k = (i + 1 + cs[t + p_row + 1] - cs[p_off[p_row] + p_row]).double()  # rank among kept items
    hits = (i + 1).double()
    ap = torch.zeros(c, dtype=torch.float64, device=dev).index_add_(0, p_row, ap_term(hits, k))
    first = torch.zeros(c, dtype=torch.float64, device=dev).index_put_((p_row[i == 0],), k[i == 0])
    is_last = i == num_pos[p_row] - 1
    last = torch.zeros(c, dtype=torch.float64, device=dev).index_put_((p_row[is_last],), k[is_last])
    ap = ap / num_pos.clamp_min(1)
    return QueryStats(num_pos.cpu().numpy(), first.cpu().numpy(), last.cpu().numpy(), ap.cpu().numpy())


def query_stats(q_pids, g_pids, q_camids, g_camids, chunks: DistanceChunks, ap_mode: str = "anchor",
                on_chunk: Optional[Callable[[int, int, torch.Tensor], None]] = None) -> QueryStats:
    """Per-query Market statistics over all chunks of ``chunks``; ``on_chunk(start, end, dist)`` sees every chunk."""
    q_pids = as_ids(q_pids, "q_pids", chunks.num_q)
    q_camids = as_ids(q_camids, "q_camids", chunks.num_q)
    g_pids = as_ids(g_pids, "g_pids", chunks.num_g)
    g_camids = as_ids(g_camids, "g_camids", chunks.num_g)
    ap_term = AP_MODES.get(ap_mode)
    same = SamePid(g_pids)
    width = same.width(q_pids)
    nq, ng = chunks.num_q, chunks.num_g
    chunks.plan(per_row_bytes=BYTES_PER_SAME_PID * width, fixed_bytes=8 * (8 * ng + 12 * nq))
    dev = chunks.device
    qc, gc = torch.from_numpy(q_camids).to(dev), torch.from_numpy(g_camids).to(dev)
    out = QueryStats(np.zeros(nq, np.int64), np.zeros(nq), np.zeros(nq), np.zeros(nq))
    if ng == 0:  # no gallery: every query is skipped
        return out
    for s, e, d in chunks:
        same_pid = torch.from_numpy(same.table(q_pids[s:e], width)).to(dev)
        st = rank_chunk(d, qc[s:e], gc, same_pid, ap_term, chunks.max_candidates, chunks.check_nan)
        for f in ("num_pos", "first", "last", "ap"):
            getattr(out, f)[s:e] = getattr(st, f)
        if on_chunk is not None:
            on_chunk(s, e, d)
    return out


def summarize(stats: QueryStats, max_rank: int) -> RankResult:
    """Average per-query statistics over the queries that have at least one positive."""
    ok = stats.num_pos > 0
    n_valid = int(ok.sum())
    if n_valid == 0:
        raise ValueError("no query has a matching gallery item (same pid, other camera): nothing to evaluate")
    first = stats.first[ok].astype(np.int64)
    hist = np.bincount(np.minimum(first, max_rank + 1), minlength=max_rank + 2)
    cmc = np.cumsum(hist)[1 : max_rank + 1] / n_valid
    minp = float(np.mean(stats.num_pos[ok] / stats.last[ok]))
    return RankResult(cmc, float(np.mean(stats.ap[ok])), minp, n_valid, int((~ok).sum()))


def evaluate_rank(q_pids, g_pids, q_camids, g_camids, *, distmat=None, qf=None, gf=None, metric: str = "cosine",
                  max_rank: int = 50, ap_mode: str = "anchor", memory_budget_mb: float = 512,
                  chunk_size: Optional[int] = None, device=None) -> RankResult:
    """CMC / mAP / mINP with the Market protocol (see the module docstring for the exact definitions).

    Give either ``distmat`` ``(Nq, Ng)`` (numpy or torch, any strides; float16 / bfloat16 / float32 / float64 or
    integer; compared in float32, or float64 for float64 and integers: both exact) or features ``qf`` ``(Nq, D)`` and
    ``gf`` ``(Ng, D)`` (any strides; float16 / bfloat16 promoted to float32, float32 / float64 kept) with ``metric``
    "cosine" | "euclidean" (squared). Nothing of the size of the distance matrix is copied: inputs are read one chunk
    of query rows at a time. ``memory_budget_mb`` bounds the extra memory of the whole evaluation (see
    :class:`DistanceChunks`; measured peaks: benchmarks/eval_memory.py); ``chunk_size`` fixes the query rows per
    chunk instead. Runs on ``device`` (default: the device of ``distmat`` / ``qf`` if a tensor, else CPU).
    ``cmc`` always has ``max_rank`` entries (torchreid truncates it to Ng; beyond Ng every valid query has matched,
    so the values are 1). NaN distances (or NaN / inf features) raise ValueError.
    """
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    chunks = DistanceChunks(distmat=distmat, qf=qf, gf=gf, metric=metric, memory_budget_mb=memory_budget_mb,
                            chunk_size=chunk_size, device=device)
    return summarize(query_stats(q_pids, g_pids, q_camids, g_camids, chunks, ap_mode), max_rank)
