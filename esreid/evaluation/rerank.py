"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), chunked, in torch (CPU or GPU), without N x N dense matrices.

With all Nq + Ng = N images as the set, d(p, g) the metric distance divided by the largest distance in row p (as the
authors' code does), and N(p, k) the k+1 nearest items of p (p itself first; ties by index):

* R(p, k)   = {g in N(p, k) : p in N(g, k)}                                                       (paper eq. 4)
* R*(p, k)  = R(p, k) U R(q, k/2) for every q in R(p, k) with |R(p,k) n R(q,k/2)| > 2/3 |R(q,k/2)|   (eq. 6)
* V[p, g]   = exp(-d(p, g)) / sum_{g' in R*(p,k1)} exp(-d(p, g')) for g in R*(p, k1), else 0          (eq. 7, 8)
* V[p]     <- mean of V[n] over n in N(p, k2 - 1), i.e. the k2 nearest including p (local query expansion)  (eq. 11)
* d_J(p, g) = 1 - sum_j min(V[p,j], V[g,j]) / sum_j max(V[p,j], V[g,j])                              (eq. 10)
* d*(p, g)  = (1 - lambda) d_J(p, g) + lambda d(p, g)                                               (eq. 12)

Readings of the paper chosen as in the authors' code: V rows are normalised to sum 1 (the paper's eq. 7 is the plain
exp), so sum max = 2 - sum min; k/2 is ``round(k1 / 2)``; the 2/3 test is strict (>); the base distance is the metric's
(cosine: 1 - cos; euclidean: squared) normalised per row by its maximum over all N items. torchreid squares its
(already squared) input distance again; we do not.
"""

from __future__ import annotations

import warnings
from typing import Dict, Optional

import torch

from esreid.errors import EsreidError
from esreid.evaluation.distance import METRICS, ArrayLike, Prepared, prepare, smallest_k

BYTES_PER_PAIR = 24  # a (chunk x N) distance block plus its masks / (chunk x Ng) output and temporaries


def row_bytes(n: int, k1: int) -> int:
    """Working memory per row of a chunk: :data:`BYTES_PER_PAIR` per item, or the expanded-set test of eq. 6 (its
    ``(k1+1, k1/2+1, k1+1)`` comparison, three bool copies, and the ``(k1+1) (k1/2+2)`` int64 candidates, sorted:
    four copies) when that is larger."""
    kh = int(round(k1 / 2))
    return max(n * BYTES_PER_PAIR, 3 * (k1 + 1) ** 2 * (kh + 1) + 4 * 8 * (k1 + 1) * (kh + 2))
BYTES_PER_ENTRY = 40  # a sparse entry: two int64 indices and a value, and the copy coalescing makes
MIN_CHUNK = 64  # fewest rows per chunk the working memory must allow
DEFAULT_BUDGET_MB = 512


class RerankMemoryError(EsreidError, ValueError):
    """The memory budget cannot hold what re-ranking keeps whatever its chunk size (:func:`fixed_bytes`)."""


def fixed_bytes(num_q: int, num_g: int, k1: int = 20, k2: int = 6, itemsize: int = 4) -> Dict[str, int]:
    """What re-ranking ``num_q`` queries against ``num_g`` gallery items holds whatever its chunk size, in bytes:

    * ``output``: the dense re-ranked ``(Nq, Ng)`` matrix, the only dense one (eq. 10 and 12 are combined in place);
    * ``neighbours``: the ``(N, k1+2)`` neighbour table and the largest gather of the reciprocal test (eq. 4),
      ``(N, k1+1, k1+1)`` int64 and its comparison;
    * ``sparse``: V (eq. 7-8) and V after query expansion (eq. 11), ``(k1+1) (1+k2)`` entries per item (measured: about
      20 and 100 per item at k1=20, k2=6 on clustered features; 147 counted) of :data:`BYTES_PER_ENTRY` bytes.
    """
    n = num_q + num_g
    return {"output": num_q * num_g * itemsize,
            "neighbours": n * (k1 + 2) * 8 + n * (k1 + 1) ** 2 * 9,
            "sparse": n * (k1 + 1) * (1 + k2) * BYTES_PER_ENTRY}


def working_bytes(num_q: int, num_g: int, memory_budget_mb: float, k1: int = 20, k2: int = 6,
                  itemsize: int = 4) -> int:
    """The budget left for the chunks once :func:`fixed_bytes` is held; :class:`RerankMemoryError` (naming what is
    needed) when that leaves less than :data:`MIN_CHUNK` rows (:func:`row_bytes`)."""
    fixed = fixed_bytes(num_q, num_g, k1, k2, itemsize)
    least = MIN_CHUNK * row_bytes(num_q + num_g, k1)
    need = sum(fixed.values()) + least
    work = int(memory_budget_mb * 2**20) - sum(fixed.values())
    if work < least:
        raise RerankMemoryError(
            f"re-ranking {num_q} queries against {num_g} gallery images needs about {need / 2**20:.0f} MB (the "
            f"{num_q} x {num_g} re-ranked distance matrix alone is {fixed['output'] / 2**20:.0f} MB), more than "
            f"memory_budget_mb={memory_budget_mb:g}")
    return work


def _neighbours(x: Prepared, metric, k: int, chunk: int):
    """``(N, k)`` nearest-item indices (self first) and the ``(N,)`` row maxima of the distance matrix."""
    nn, row_max = [], []
    for s in range(0, len(x), chunk):
        d = metric.distance(x.rows(s, min(s + chunk, len(x))), x)
        nn.append(smallest_k(d, k))
        row_max.append(d.amax(1))
    return torch.cat(nn), torch.cat(row_max).clamp_min(torch.finfo(x.feats.dtype).tiny)


def _reciprocal(nn: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, k+1)`` mask: is ``nn[p, j]`` in R(p, k), i.e. is p among the k+1 nearest of ``nn[p, j]``?   (eq. 4)"""
    fwd = nn[:, : k + 1]
    p = torch.arange(nn.shape[0], device=nn.device)[:, None, None]
    return (fwd[fwd] == p).any(-1)


def _expanded_sets(nn: torch.Tensor, k1: int, rows: torch.Tensor, recip: torch.Tensor, recip_h: torch.Tensor):
    """Members of R*(p, k1) for ``rows``: ``(c, W)`` item indices with a validity mask, no duplicates.   (eq. 6)"""
    kh = int(round(k1 / 2))
    r_p = nn[rows, : k1 + 1]  # (c, k1+1), valid where recip[rows]
    ok_p = recip[rows]
    r_q = nn[r_p, : kh + 1]  # (c, k1+1, kh+1): R(q, k/2) candidates for each q in N(p, k1)
    ok_q = recip_h[r_p] & ok_p[..., None]
    inter = ((r_q[..., None] == r_p[:, None, None, :]) & ok_p[:, None, None, :]).any(-1) & ok_q
    accept = inter.sum(-1) * 3 > 2 * ok_q.sum(-1)  # |R(p,k) n R(q,k/2)| > 2/3 |R(q,k/2)|
    members = torch.cat([r_p, r_q.flatten(1)], 1)
    valid = torch.cat([ok_p, (ok_q & accept[..., None]).flatten(1)], 1)
    n = nn.shape[0]
    members = torch.where(valid, members, n).sort(1).values
    dup = torch.cat([torch.zeros_like(members[:, :1], dtype=torch.bool), members[:, 1:] == members[:, :-1]], 1)
    return members, (members < n) & ~dup


def _weights(x: Prepared, metric, nn, row_max, k1, chunk) -> torch.Tensor:
    """Sparse ``(N, N)`` V of eq. 7-8 (rows sum to 1)."""
    recip, recip_h = _reciprocal(nn, k1), _reciprocal(nn, int(round(k1 / 2)))
    idx, vals = [], []
    for s in range(0, len(x), chunk):
        rows = torch.arange(s, min(s + chunk, len(x)), device=nn.device)
        members, valid = _expanded_sets(nn, k1, rows, recip, recip_h)
        r, j = valid.nonzero(as_tuple=True)
        p, g = rows[r], members[r, j]
        w = torch.exp(-metric.paired(x.take(p), x.take(g)) / row_max[p])  # eq. 7
        w = w / torch.zeros(len(x), dtype=w.dtype, device=w.device).index_add_(0, p, w)[p]
        idx.append(torch.stack([p, g]))
        vals.append(w)
    return torch.sparse_coo_tensor(torch.cat(idx, 1), torch.cat(vals), (len(x), len(x)),
                                   check_invariants=False).coalesce()


def _query_expansion(v: torch.Tensor, nn: torch.Tensor, k2: int) -> torch.Tensor:
    """V[p] <- mean of V over the k2 nearest of p (eq. 11), as a sparse product."""
    n = nn.shape[0]
    rows = torch.arange(n, device=nn.device).repeat_interleave(k2)
    avg = torch.sparse_coo_tensor(torch.stack([rows, nn[:, :k2].reshape(-1)]),
                                  torch.full((n * k2,), 1.0 / k2, dtype=v.dtype, device=v.device), (n, n),
                                  check_invariants=False)
    with warnings.catch_warnings():  # torch flags its internal sparse CSR path as beta
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse.mm(avg.coalesce(), v).coalesce()


def _min_sums(vq: torch.Tensor, vg: torch.Tensor, max_pairs: int) -> torch.Tensor:
    """``(Nq, Ng)`` sum_j min(vq[q, j], vg[g, j]) by joining the sparse rows on j (inverted index over vg's columns)."""
    num_q, num_g = vq.shape[0], vg.shape[0]
    (qr, qj), qv = vq.indices(), vq.values()
    gj_order = torch.argsort(vg.indices()[1], stable=True)
    gg, gj, gv = vg.indices()[0][gj_order], vg.indices()[1][gj_order], vg.values()[gj_order]
    col_count = torch.bincount(gj, minlength=vq.shape[1])
    col_start = torch.cumsum(col_count, 0) - col_count
    out = torch.zeros(num_q, num_g, dtype=qv.dtype, device=qv.device)
    per_entry = col_count[qj]
    bounds = torch.cumsum(per_entry, 0)
    s = 0
    while s < len(qj):  # groups of query entries whose joins fit max_pairs (a loop over groups, not over queries)
        e = max(int(torch.searchsorted(bounds, bounds[s] - per_entry[s] + max_pairs, right=True)), s + 1)
        cnt = per_entry[s:e]
        src = torch.repeat_interleave(torch.arange(s, e, device=qv.device), cnt)
        offs = torch.arange(len(src), device=qv.device) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        tgt = col_start[qj[src]] + offs
        out.view(-1).index_add_(0, qr[src] * num_g + gg[tgt], torch.minimum(qv[src], gv[tgt]))
        s = e
    return out


def re_ranking(qf: ArrayLike, gf: ArrayLike, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,
               metric: str = "cosine", memory_budget_mb: float = DEFAULT_BUDGET_MB,
               device: Optional[torch.device] = None, chunk_size: Optional[int] = None,
               max_pairs: Optional[int] = None) -> torch.Tensor:
    """k-reciprocal re-ranked ``(Nq, Ng)`` float distance matrix (see the module docstring for the definition).

    ``memory_budget_mb`` bounds the whole computation: what it holds whatever the chunk size (:func:`fixed_bytes`:
    the dense ``(Nq, Ng)`` output, the neighbour tables, the sparse V) is set aside first, and the rest sizes the row
    chunks of the N x N distance computations and the sparse joins. A budget that cannot hold the fixed part and
    :data:`MIN_CHUNK` rows raises :class:`RerankMemoryError` before any distance is computed. ``chunk_size`` (rows)
    and ``max_pairs`` (sparse pairs per join group) set the chunks directly instead, without the budget.
    """
    if k1 < 1 or not 1 <= k2 <= k1 + 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"need k1 >= 1, 1 <= k2 <= k1 + 1, 0 <= lambda_value <= 1; got {k1}, {k2}, {lambda_value}")
    m = METRICS.get(metric)
    q, g = prepare(qf, metric, "qf", device), prepare(gf, metric, "gf", device)
    num_q = len(q)
    x = Prepared(torch.cat([q.feats, g.feats]), None if q.sqnorm is None else torch.cat([q.sqnorm, g.sqnorm]))
    if len(x) < k1 + 1:
        raise ValueError(f"re-ranking with k1={k1} needs at least {k1 + 1} images, got {len(x)}")
    work = 0 if chunk_size and max_pairs else working_bytes(num_q, len(g), memory_budget_mb, k1, k2,
                                                              x.feats.element_size())
    chunk = chunk_size or max(1, int(work // row_bytes(len(x), k1)))
    max_pairs = max_pairs or max(1, work // BYTES_PER_ENTRY)
    nn, row_max = _neighbours(x, m, k1 + 1, chunk)
    v = _weights(x, m, nn, row_max, k1, chunk)
    if k2 > 1:
        v = _query_expansion(v, nn, k2)
    vq = v.index_select(0, torch.arange(num_q, device=nn.device)).coalesce()
    vg = v.index_select(0, torch.arange(num_q, len(x), device=nn.device)).coalesce()
    del v
    out = _min_sums(vq, vg, max_pairs).to(x.feats.dtype)  # sum_j min: (Nq, Ng)
    del vq, vg
    for s in range(0, num_q, chunk):  # in place, one chunk of rows at a time: the only dense matrix is the output
        e = min(s + chunk, num_q)
        min_sum = out[s:e]
        jaccard = 1.0 - min_sum / (2.0 - min_sum)  # eq. 10 with sum max = 2 - sum min (rows of V sum to 1)
        d = m.distance(q.rows(s, e), g) / row_max[s:e, None]
        out[s:e] = (1 - lambda_value) * jaccard + lambda_value * d  # eq. 12
    return out
