"""Evaluation protocols, chosen by name (``ReIDDataset.protocol``) from :data:`PROTOCOLS`.

Every entry is ``fn(qf, q_pids, q_camids, gf, g_pids, g_camids, *, metric, ap_mode, rerank, ranks, **options)
-> dict`` with JSON-serialisable values (floats in [0, 1] for the metrics), among them ``"cmc"``: the CMC curve at
ranks 1..50 (a list of 50 floats; VehicleID: the mean over trials), for plots. Features may be numpy arrays or torch
tensors of any strides (see :func:`~esreid.evaluation.metrics.evaluate_rank` for the dtypes). ``options`` come from
``cfg.test.protocol_args``; every protocol accepts ``memory_budget_mb``, ``chunk_size`` and ``device``. Each is
registered with ``options`` (:class:`Options`) and ``metrics`` (the :class:`~esreid.evaluation.metric_keys.MetricKeys`
it reports, which every reader of results takes the metric names from).

* ``market``: docs/methods.md §0 (evaluation protocol) (see :mod:`esreid.evaluation.metrics`); pid-0 gallery distractors
are ordinary negatives.
* ``cuhk03_sgs``: single-gallery-shot (docs/methods.md §0 (evaluation protocol)): CMC averaged over ``num_repeats``
draws of one gallery image per pid among the query's kept items; AP / mINP on the full kept list.
* ``vehicleid``: docs/methods.md §0 (evaluation protocol): query and gallery are pooled; per trial t (seed ``base_seed +
t``) one random image per id is the gallery and the rest are queries; no junk removal; mean and population std over
``trials``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from esreid.evaluation.distance import as_features
from esreid.evaluation.metric_keys import MetricKey, MetricKeys
from esreid.evaluation.metrics import CMC_RANKS, DistanceChunks, as_ids, query_stats, same_pid_index, summarize
from esreid.evaluation.rerank import re_ranking
from esreid.registry import Registry

PROTOCOLS = Registry("protocol")

# What the ranking protocols report (docs/methods.md §0, evaluation protocol): mAP, mINP, CMC at each of test.ranks,
# and the mean reciprocal rank of the first true match (1 / k_1 per query, averaged like AP).
RANKING_METRICS = MetricKeys((
    MetricKey("mAP", "mAP", curve=True),
    MetricKey("mINP", "mINP"),
    MetricKey("R{k}", "R{k}", curve=True),
    MetricKey("mRR", "mRR", per_query=lambda s: 1.0 / s.first),
))


@dataclass(frozen=True)
class Options:
    """The ``test.protocol_args`` a protocol accepts: ``name -> (type, smallest value or None)``; every protocol also
    accepts :data:`COMMON_OPTIONS`. Checked when the config is loaded (:meth:`problem`)."""

    fields: Dict[str, Tuple[type, Optional[float]]]

    def problem(self, args: Dict[str, Any], protocol: str) -> Optional[str]:
        """What is wrong with ``args`` for ``protocol`` (None when nothing)."""
        fields = {**COMMON_OPTIONS, **self.fields}
        for key, value in args.items():
            if key not in fields:
                return f"protocol {protocol!r} has no option {key!r}; it accepts: {', '.join(sorted(fields))}"
            tp, low = fields[key]
            ok = isinstance(value, tp) and not isinstance(value, bool) if tp is not float else (
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
            if not ok:
                return f"option {key!r} of protocol {protocol!r}: expected {tp.__name__}, got {value!r}"
            if low is not None and value < low:
                return f"option {key!r} of protocol {protocol!r}: expected a value >= {low:g}, got {value!r}"
        return None


COMMON_OPTIONS = {"memory_budget_mb": (float, 1.0), "chunk_size": (int, 1), "device": (str, None)}


def distance_chunks(qf, gf, *, metric: str, rerank: bool, memory_budget_mb: float = 512,
                    chunk_size: Optional[int] = None, device=None) -> DistanceChunks:
    """Chunked distances from features, through k-reciprocal re-ranking first when ``rerank``."""
    if rerank:
        distmat = re_ranking(qf, gf, metric=metric, memory_budget_mb=memory_budget_mb, device=device)
        return DistanceChunks(distmat=distmat, memory_budget_mb=memory_budget_mb, chunk_size=chunk_size, device=device)
    return DistanceChunks(qf=qf, gf=gf, metric=metric, memory_budget_mb=memory_budget_mb, chunk_size=chunk_size,
                          device=device)


@PROTOCOLS.register("market", options=Options({}), metrics=RANKING_METRICS)
def market(qf, q_pids, q_camids, gf, g_pids, g_camids, *, metric: str = "cosine", ap_mode: str = "anchor",
           rerank: bool = False, ranks: Sequence[int] = (1, 5, 10, 20), **options: Any) -> Dict[str, Any]:
    chunks = distance_chunks(qf, gf, metric=metric, rerank=rerank, **options)
    stats = query_stats(q_pids, g_pids, q_camids, g_camids, chunks, ap_mode)
    result = summarize(stats, max(CMC_RANKS, *ranks))
    return {**result.as_dict(ranks), **RANKING_METRICS.per_query_means(stats.valid()),
            "cmc": result.cmc[:CMC_RANKS].tolist(), "num_valid_q": result.num_valid_q,
            "num_skipped_q": result.num_skipped_q}


def _sgs_draw(g_pids: torch.Tensor, pid_slot: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Gallery indices of one item per pid: the one with the lowest priority ``u`` (uniform per pid)."""
    best = torch.full((int(pid_slot.max()) + 1,), torch.inf, dtype=u.dtype, device=u.device)
    best = best.scatter_reduce(0, pid_slot, u, "amin")
    return (u == best[pid_slot]).nonzero().squeeze(1)  # u has no ties almost surely


def _sgs_first_hits(dist, q_pids, q_cams, g_pids, g_cams, same_pid, u, drawn) -> torch.Tensor:
    """1-based rank of the drawn positive among the drawn items, per query ``(c,)`` (0 where there is no positive).

    For every other pid the drawn item is ``drawn``'s; for the query's own pid it is the kept (other-camera) item with
    the lowest priority ``u``, so each pid's pick is uniform among its kept items, as in torchreid's ``eval_cuhk03``.
    """
    cand = same_pid.clamp_min(0)
    pos = (same_pid >= 0) & (g_cams[cand] != q_cams[:, None])
    p_col = cand.gather(1, torch.where(pos, u[cand], torch.inf).argmin(1, keepdim=True))  # (c, 1) drawn positive
    d_pos, d_neg = dist.gather(1, p_col), dist[:, drawn]
    neg = g_pids[drawn][None, :] != q_pids[:, None]
    before = neg & ((d_neg < d_pos) | ((d_neg == d_pos) & (drawn[None, :] < p_col)))  # ties by gallery index
    return torch.where(pos.any(1), before.sum(1) + 1, 0)


@PROTOCOLS.register("cuhk03_sgs", options=Options({"num_repeats": (int, 1), "seed": (int, 0)}), metrics=RANKING_METRICS)
def cuhk03_sgs(qf, q_pids, q_camids, gf, g_pids, g_camids, *, metric: str = "cosine", ap_mode: str = "anchor",
               rerank: bool = False, ranks: Sequence[int] = (1, 5, 10, 20), num_repeats: int = 10, seed: int = 0,
               **options: Any) -> Dict[str, Any]:
    chunks = distance_chunks(qf, gf, metric=metric, rerank=rerank, **options)
    q_pids, q_camids = as_ids(q_pids, "q_pids", chunks.num_q), as_ids(q_camids, "q_camids", chunks.num_q)
    g_pids, g_camids = as_ids(g_pids, "g_pids", chunks.num_g), as_ids(g_camids, "g_camids", chunks.num_g)
    dev = chunks.device
    qp, qc, gp, gc = (torch.from_numpy(a).to(dev) for a in (q_pids, q_camids, g_pids, g_camids))
    same_pid = torch.from_numpy(same_pid_index(g_pids, q_pids)).to(dev)
    pid_slot = torch.unique(gp, return_inverse=True)[1]
    draws = [torch.from_numpy(np.random.default_rng(seed + r).random(chunks.num_g)).to(dev) for r in range(num_repeats)]
    drawn = [_sgs_draw(gp, pid_slot, u) for u in draws]
    first = torch.zeros(num_repeats, chunks.num_q, dtype=torch.long, device=dev)

    def single_shot(s: int, e: int, d: torch.Tensor) -> None:
        for r in range(num_repeats):
            first[r, s:e] = _sgs_first_hits(d, qp[s:e], qc[s:e], gp, gc, same_pid[s:e], draws[r], drawn[r])

    stats = query_stats(q_pids, g_pids, q_camids, g_camids, chunks, ap_mode, single_shot)
    full = summarize(stats, max(ranks))
    ok = first[0] > 0
    top = max(CMC_RANKS, *ranks)
    hist = torch.stack([torch.bincount(f[ok].clamp_max(top + 1), minlength=top + 2) for f in first])
    cmc = (torch.cumsum(hist, 1)[:, 1 : top + 1].double() / int(ok.sum())).mean(0)  # mean over the draws
    out = {"mAP": full.mAP, "mINP": full.mINP, **{f"R{r}": float(cmc[r - 1]) for r in ranks},
           **RANKING_METRICS.per_query_means(stats.valid())}
    return {**out, "cmc": cmc[:CMC_RANKS].tolist(), "num_valid_q": full.num_valid_q,
            "num_skipped_q": full.num_skipped_q, "num_repeats": num_repeats}


@PROTOCOLS.register("vehicleid", options=Options({"trials": (int, 1), "base_seed": (int, 0)}), metrics=RANKING_METRICS)
def vehicleid(qf, q_pids, q_camids, gf, g_pids, g_camids, *, metric: str = "cosine", ap_mode: str = "anchor",
              rerank: bool = False, ranks: Sequence[int] = (1, 5, 10), trials: int = 10, base_seed: int = 0,
              **options: Any) -> Dict[str, Any]:
    del q_camids, g_camids  # camera ids play no role: nothing is junk (fast-reid sets camid = image id)
    feats = as_features(qf, "qf")
    pids = as_ids(q_pids, "q_pids", len(feats))
    if len(gf):  # the VehicleID loader leaves the gallery empty; anything given is pooled with the queries
        feats = torch.cat([feats, as_features(gf, "gf")])
        pids = np.concatenate([pids, as_ids(g_pids, "g_pids", len(gf))])
    seeds = [base_seed + t for t in range(trials)]
    rows = []
    for seed in seeds:
        u = np.random.default_rng(seed).random(len(pids))
        order = np.lexsort((u, pids))  # by pid, then priority: the first of each pid is its gallery image
        first_of_pid = np.r_[True, pids[order][1:] != pids[order][:-1]]
        gal, qry = np.sort(order[first_of_pid]), np.sort(order[~first_of_pid])
        r = market(feats[qry], pids[qry], np.zeros(len(qry), np.int64), feats[gal], pids[gal],
                   np.ones(len(gal), np.int64), metric=metric, ap_mode=ap_mode, rerank=rerank, ranks=ranks, **options)
        rows.append(r)
    out: Dict[str, Any] = {}
    for key in (m.key for m in RANKING_METRICS.expand(ranks)):
        vals = np.array([r[key] for r in rows])
        out[key], out[f"{key}_std"] = float(vals.mean()), float(vals.std())
    out["cmc"] = np.mean([r["cmc"] for r in rows], 0).tolist()
    return {**out, "trials": trials, "seeds": seeds, "num_queries": [int(r["num_valid_q"]) for r in rows]}
