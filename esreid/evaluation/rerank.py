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
from typing import Optional

import torch

from esreid.evaluation.distance import METRICS, ArrayLike, Prepared, prepare, smallest_k

BYTES_PER_PAIR = 16  # a (chunk x N) distance block plus its masks / (chunk x Ng) output and temporaries


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
               metric: str = "cosine", memory_budget_mb: float = 512, device: Optional[torch.device] = None
               ) -> torch.Tensor:
    """k-reciprocal re-ranked ``(Nq, Ng)`` float distance matrix (see the module docstring for the definition).

    ``memory_budget_mb`` sizes the row chunks of the N x N distance computations and the sparse joins; the output
    ``(Nq, Ng)`` matrix itself is dense.
    """
    if k1 < 1 or not 1 <= k2 <= k1 + 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"need k1 >= 1, 1 <= k2 <= k1 + 1, 0 <= lambda_value <= 1; got {k1}, {k2}, {lambda_value}")
    m = METRICS.get(metric)
    q, g = prepare(qf, metric, "qf", device), prepare(gf, metric, "gf", device)
    num_q = len(q)
    x = Prepared(torch.cat([q.feats, g.feats]), None if q.sqnorm is None else torch.cat([q.sqnorm, g.sqnorm]))
    if len(x) < k1 + 1:
        raise ValueError(f"re-ranking with k1={k1} needs at least {k1 + 1} images, got {len(x)}")
    chunk = max(1, int(memory_budget_mb * 2**20 // (len(x) * BYTES_PER_PAIR)))
    nn, row_max = _neighbours(x, m, k1 + 1, chunk)
    v = _weights(x, m, nn, row_max, k1, chunk)
    if k2 > 1:
        v = _query_expansion(v, nn, k2)
    vq = v.index_select(0, torch.arange(num_q, device=nn.device)).coalesce()
    vg = v.index_select(0, torch.arange(num_q, len(x), device=nn.device)).coalesce()
    min_sum = _min_sums(vq, vg, max_pairs=max(1, int(memory_budget_mb * 2**20 // 40)))
    jaccard = 1.0 - min_sum / (2.0 - min_sum)  # eq. 10 with sum max = 2 - sum min (rows of V sum to 1)
    out = torch.empty(num_q, len(g), dtype=x.feats.dtype, device=nn.device)
    for s in range(0, num_q, chunk):
        e = min(s + chunk, num_q)
        d = m.distance(q.rows(s, e), g) / row_max[s:e, None]
        out[s:e] = (1 - lambda_value) * jaccard[s:e] + lambda_value * d  # eq. 12
    return out
