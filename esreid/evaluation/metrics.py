"""Exact CMC / mAP / mINP with the Market protocol, in query chunks, without a per-query Python loop.

Definitions (docs/methods.md §0 (evaluation protocol), the torchreid / fast-reid ``eval_market1501`` semantics):

* for a query (pid p, camera c) gallery items with pid p AND camera c are *junk* and removed; everything else is kept
  (pid-0 distractors are ordinary negatives);
* kept items are ranked by ascending distance, ties by gallery index (stable argsort);
* with ``k_1 < ... < k_R`` the 1-based ranks of the R positives among the kept items:
  CMC(r) = [k_1 <= r];  AP ("anchor") = (1/R) sum_i i / k_i;  AP ("official", Market MATLAB trapezoid)
  = (1/R) sum_i ((i-1)/(k_i-1) + i/k_i) / 2, the first term being 1 when k_i = 1;  INP = R / k_R;
* queries with R = 0 are skipped (they enter no average) and counted in ``num_skipped_q``.

How it stays exact and fast: only the *ranks of the positives* are needed, so for each query we keep the positives and
the negatives whose distance is <= that of the hardest positive (every other item ranks after all positives), sort that
short list by (query, distance, gallery index), and read off k_i as the position in the list and i as the running count
of positives. The dense work per (query, gallery) pair is one distance, one comparison and a ``nonzero`` scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from esreid.evaluation.distance import METRICS, ArrayLike, order_within_rows, prepare
from esreid.registry import Registry

AP_MODES = Registry("ap_mode")
AP_MODES.register("anchor")(lambda i, k: i / k)  # mean precision at each hit


@AP_MODES.register("official")
def _trapezoid_ap_term(i: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Market-1501 MATLAB ``compute_AP``: mean of the precisions just before and at the i-th hit."""
    prev = torch.where(k > 1, (i - 1) / (k - 1).clamp_min(1), torch.ones_like(i))
    return 0.5 * (prev + i / k)


BYTES_PER_PAIR = 12  # distance (4, or 8 for float64 distmats) + comparison masks; used to size query chunks


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


def labels(x: ArrayLike, name: str, n: Optional[int] = None) -> np.ndarray:
    a = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x)
    if a.ndim != 1 or (n is not None and len(a) != n):
        want = f"({n},)" if n is not None else "1-D"
        raise ValueError(f"{name}: expected an integer array of shape {want}, got shape {a.shape}")
    if len(a) and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected integers, got dtype {a.dtype}")
    return a.astype(np.int64)


class DistanceChunks:
    """Query-chunked distances from either a distance matrix or two feature sets; never the full matrix at once.

    Iterating yields ``(start, end, dist)`` with ``dist`` the ``(end - start, Ng)`` tensor on ``device``.
    """

    def __init__(self, *, distmat=None, qf=None, gf=None, metric: str = "cosine", memory_budget_mb: float = 512,
                 chunk_size: Optional[int] = None, device=None):
        given = distmat if distmat is not None else qf
        default = given.device if isinstance(given, torch.Tensor) else torch.device("cpu")
        self.device = torch.device(device) if device is not None else default  # default: where the inputs are
        if (distmat is None) == (qf is None or gf is None):
            raise ValueError("pass either distmat=(Nq, Ng) or both qf=(Nq, D) and gf=(Ng, D)")
        self.distmat = None
        if distmat is not None:
            dm = torch.as_tensor(distmat)  # a numpy distmat is shared, not copied; slices move chunk by chunk
            if dm.ndim != 2:
                raise ValueError(f"distmat: expected shape (Nq, Ng), got {tuple(dm.shape)}")
            self.distmat = dm if dm.is_floating_point() else dm.double()
            self.num_q, self.num_g = dm.shape
        else:
            self.metric = METRICS.get(metric)
            self.q = prepare(qf, metric, "qf", self.device)
            self.g = prepare(gf, metric, "gf", self.device)
            if self.q.feats.shape[1] != self.g.feats.shape[1]:
                raise ValueError(f"qf has dimension {self.q.feats.shape[1]} but gf has {self.g.feats.shape[1]}")
            self.num_q, self.num_g = len(self.q), len(self.g)
        if chunk_size is None:
            chunk_size = int(memory_budget_mb * 2**20 // (max(self.num_g, 1) * BYTES_PER_PAIR))
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size} (memory_budget_mb={memory_budget_mb})")
        self.chunk_size = chunk_size

    def __iter__(self) -> Iterator[Tuple[int, int, torch.Tensor]]:
        for s in range(0, self.num_q, self.chunk_size):
            e = min(s + self.chunk_size, self.num_q)
            if self.distmat is not None:
                d = self.distmat[s:e].to(self.device)
            else:
                d = self.metric.distance(self.q.rows(s, e), self.g)
            if not torch.isfinite(d.sum()) and torch.isnan(d).any():  # the sum is NaN whenever an entry is
                raise ValueError(f"distances for queries {s}..{e - 1} contain NaN")
            yield s, e, d


def same_pid_index(g_pids: np.ndarray, q_pids: np.ndarray) -> np.ndarray:
    """``(Nq, M)`` gallery indices with each query's pid (ascending, -1 padding); M = the largest such group."""
    order = np.argsort(g_pids, kind="stable")
    lo = np.searchsorted(g_pids[order], q_pids, "left")
    n = np.searchsorted(g_pids[order], q_pids, "right") - lo
    cols = np.arange(max(int(n.max(initial=0)), 1))[None, :]
    if len(order) == 0:
        return np.full((len(q_pids), 1), -1, dtype=np.int64)
    return np.where(cols < n[:, None], order[np.minimum(lo[:, None] + cols, len(order) - 1)], -1)


def rank_chunk(dist: torch.Tensor, q_pids: torch.Tensor, q_cams: torch.Tensor, g_pids: torch.Tensor,
               g_cams: torch.Tensor, same_pid: torch.Tensor, ap_term: Callable) -> QueryStats:
    """Market-protocol statistics for one chunk.

    Args:
        dist: ``(c, Ng)`` distances; q_pids / q_cams ``(c,)``; g_pids / g_cams ``(Ng,)`` int64 on dist's device.
        same_pid: ``(c, M)`` gallery indices with the query's pid (-1 padding), from :func:`same_pid_index`.
        ap_term: ``(i, k) -> contribution`` of the i-th hit at rank k (float64 tensors), an :data:`AP_MODES` entry.
    """
    c, num_g, dev = dist.shape[0], dist.shape[1], dist.device
    valid = same_pid >= 0
    cand = same_pid.clamp_min(0)
    pos = valid & (g_cams[cand] != q_cams[:, None])  # junk = same pid AND same camera
    num_pos = pos.sum(1)
    neg_inf = torch.full((), -torch.inf, dtype=dist.dtype, device=dev)
    hardest = torch.where(pos, dist.gather(1, cand), neg_inf).amax(1)
    # every item ranked before the hardest positive has a distance <= it (ties: the exact order below settles them)
    flat = (dist <= hardest[:, None]).view(-1).nonzero().squeeze(1)  # row-major: (query, gallery index) order
    rows = flat // num_g
    cols = flat - rows * num_g
    same = g_pids[cols] == q_pids[rows]
    kept = ~(same & (g_cams[cols] == q_cams[rows]))
    rows, hit, values = rows[kept], same[kept], dist.view(-1)[flat[kept]]
    order = order_within_rows(rows, values)  # by query, then distance, then gallery index
    rows, hit = rows[order], hit[order]
    counts = torch.bincount(rows, minlength=c)
    start = torch.cumsum(counts, 0) - counts
    k = torch.arange(rows.numel(), device=dev) - start[rows] + 1  # rank among kept items
    hits_so_far = torch.cumsum(hit.long(), 0)
    before = torch.cat([hits_so_far.new_zeros(1), hits_so_far])[start]
    i = hits_so_far - before[rows]
    r, k, i = rows[hit], k[hit].double(), i[hit].double()
    ap_sum = torch.zeros(c, dtype=torch.float64, device=dev).index_add_(0, r, ap_term(i, k))
    first = torch.zeros(c, dtype=torch.float64, device=dev).index_put_((r[i == 1],), k[i == 1])
    is_last = i == num_pos[r]
    last = torch.zeros(c, dtype=torch.float64, device=dev).index_put_((r[is_last],), k[is_last])
    ap = ap_sum / num_pos.clamp_min(1)
    return QueryStats(num_pos.cpu().numpy(), first.cpu().numpy(), last.cpu().numpy(), ap.cpu().numpy())


def query_stats(q_pids, g_pids, q_camids, g_camids, chunks: DistanceChunks, ap_mode: str = "anchor",
                on_chunk: Optional[Callable[[int, int, torch.Tensor], None]] = None) -> QueryStats:
    """Per-query Market statistics over all chunks of ``chunks``; ``on_chunk(start, end, dist)`` sees every chunk."""
    q_pids = labels(q_pids, "q_pids", chunks.num_q)
    q_camids = labels(q_camids, "q_camids", chunks.num_q)
    g_pids = labels(g_pids, "g_pids", chunks.num_g)
    g_camids = labels(g_camids, "g_camids", chunks.num_g)
    ap_term = AP_MODES.get(ap_mode)
    dev = chunks.device
    same_pid = torch.from_numpy(same_pid_index(g_pids, q_pids)).to(dev)
    qp, qc = torch.from_numpy(q_pids).to(dev), torch.from_numpy(q_camids).to(dev)
    gp, gc = torch.from_numpy(g_pids).to(dev), torch.from_numpy(g_camids).to(dev)
    parts = []
    for s, e, d in chunks:
        parts.append(rank_chunk(d, qp[s:e], qc[s:e], gp, gc, same_pid[s:e], ap_term))
        if on_chunk is not None:
            on_chunk(s, e, d)
    return QueryStats(*(np.concatenate([getattr(p, f) for p in parts]) if parts else np.zeros(0)
                        for f in ("num_pos", "first", "last", "ap")))


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

    Give either ``distmat`` ``(Nq, Ng)`` (numpy or torch, any float dtype, used as is) or features ``qf`` ``(Nq, D)``
    and ``gf`` ``(Ng, D)`` with ``metric`` "cosine" | "euclidean" (squared); float16/bfloat16 features are promoted to
    float32. Queries are processed ``chunk_size`` at a time (default: as many as fit ``memory_budget_mb`` at
    ~12 bytes per query-gallery pair) on ``device`` (default: the device of ``distmat`` / ``qf`` if a tensor, else
    CPU). The dense per-chunk tensors follow the budget; the candidate list adds ~40 bytes per negative ranked above
    its query's hardest positive (a few per query with useful features; the whole chunk in the worst case).
    ``cmc`` always has ``max_rank`` entries (torchreid truncates it to Ng; beyond Ng every valid query has matched,
    so the values are 1).
    """
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    chunks = DistanceChunks(distmat=distmat, qf=qf, gf=gf, metric=metric, memory_budget_mb=memory_budget_mb,
                            chunk_size=chunk_size, device=device)
    return summarize(query_stats(q_pids, g_pids, q_camids, g_camids, chunks, ap_mode), max_rank)
