"""Large-gallery search with faiss (optional extra ``esreid[faiss]``): index gallery features, return top-k per query.

``GalleryIndex(kind, metric)`` with ``kind`` one of :data:`INDEX_KINDS`:

* ``flat``: exact search (brute force inside faiss);
* ``ivf``: inverted lists over k-means cells (``nlist`` cells, default sqrt(N); ``nprobe`` visited per query), trained
  on (a subsample of, 64 per cell) the first ``add``; approximate;
* ``hnsw``: hierarchical navigable small-world graph (``hnsw_m`` links, ``ef_search``); approximate, no training.

Distances follow :mod:`esreid.evaluation.distance`: cosine = 1 - cos (features L2-normalised, inner-product index),
euclidean = squared L2. :func:`evaluate_topk` evaluates with a top-k search when the gallery is too large for
distance matrices; :func:`search_main` is the ``esreid search`` command.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from esreid.evaluation.distance import ArrayLike, as_features
from esreid.evaluation.metrics import AP_MODES, labels, same_pid_index
from esreid.registry import Registry

INDEX_KINDS = Registry("index kind")


def faiss_module():
    """Import faiss lazily, with an error that names the extra to install."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError("faiss is not installed; install the optional extra: pip install 'esreid[faiss]' "
                          "(or faiss-cpu / faiss-gpu)") from e
    return faiss


@INDEX_KINDS.register("flat")
def _flat(faiss, dim: int, faiss_metric: int, num: int, **_: Any):
    return faiss.IndexFlat(dim, faiss_metric)


@INDEX_KINDS.register("ivf")
def _ivf(faiss, dim: int, faiss_metric: int, num: int, nlist: Optional[int] = None, nprobe: int = 16,
         train_iters: int = 10, **_: Any):
    nlist = nlist or max(1, min(int(math.sqrt(num)), num // 39))  # faiss wants >= 39 training points per cell
    index = faiss.IndexIVFFlat(faiss.IndexFlat(dim, faiss_metric), dim, nlist, faiss_metric)
    index.nprobe = nprobe
    index.cp.niter, index.cp.max_points_per_centroid = train_iters, 64  # k-means on a subsample: seconds at 1M
    return index


@INDEX_KINDS.register("hnsw")
def _hnsw(faiss, dim: int, faiss_metric: int, num: int, hnsw_m: int = 32, ef_search: int = 64,
          ef_construction: int = 40, **_: Any):
    index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss_metric)
    index.hnsw.efSearch, index.hnsw.efConstruction = ef_search, ef_construction
    return index


class GalleryIndex:
    """A faiss index over gallery features, returning the caller's ids.

    Args:
        kind: "flat" | "ivf" | "hnsw".
        metric: "cosine" | "euclidean" (squared).
        params: kind-specific settings (``nlist``, ``nprobe``, ``hnsw_m``, ``ef_search``, ``ef_construction``).
    """

    def __init__(self, kind: str = "flat", metric: str = "cosine", **params: Any):
        INDEX_KINDS.get(kind)
        if metric not in ("cosine", "euclidean"):
            raise ValueError(f"metric: expected 'cosine' or 'euclidean', got {metric!r}")
        self.kind, self.metric, self.params = kind, metric, params
        self.index = None
        self.ids = np.zeros(0, np.int64)

    def _prepare(self, x: ArrayLike, name: str) -> np.ndarray:
        t = as_features(x, name).float()
        if self.metric == "cosine":
            t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return np.ascontiguousarray(t.cpu().numpy())

    def add(self, feats: ArrayLike, ids: Optional[ArrayLike] = None) -> GalleryIndex:
        """Add ``feats`` ``(N, D)`` with integer ``ids`` ``(N,)`` (default: running positions 0, 1, ...)."""
        x = self._prepare(feats, "gallery features")
        ids = np.arange(len(self.ids), len(self.ids) + len(x)) if ids is None else labels(ids, "ids", len(x))
        faiss = faiss_module()
        if self.index is None:
            faiss_metric = faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2
            self.index = INDEX_KINDS.get(self.kind)(faiss, x.shape[1], faiss_metric, len(x), **self.params)
            if not self.index.is_trained:
                self.index.train(x)
        elif x.shape[1] != self.index.d:
            raise ValueError(f"gallery features: dimension {x.shape[1]} does not match the index ({self.index.d})")
        self.index.add(x)
        self.ids = np.concatenate([self.ids, ids])
        return self

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, q: ArrayLike, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(dist, ids)``, both ``(Nq, k)``, nearest first; ids are -1 (dist inf) where fewer than k were found."""
        if self.index is None:
            raise ValueError("the index is empty: call add() first")
        x = self._prepare(q, "query features")
        if x.shape[1] != self.index.d:
            raise ValueError(f"query features: dimension {x.shape[1]} does not match the index ({self.index.d})")
        score, pos = self.index.search(x, k)
        dist = 1.0 - score if self.metric == "cosine" else score
        found = pos >= 0
        return np.where(found, dist, np.inf).astype(np.float32), np.where(found, self.ids[pos.clip(min=0)], -1)

    def save(self, path: str) -> None:
        """One ``.npz`` file: the serialised faiss index, the ids and the settings."""
        if self.index is None:
            raise ValueError("the index is empty: nothing to save")
        np.savez(path, index=faiss_module().serialize_index(self.index), ids=self.ids,
                 kind=np.array(self.kind), metric=np.array(self.metric))

    @classmethod
    def load(cls, path: str) -> GalleryIndex:
        try:
            with np.load(path, allow_pickle=False) as f:
                obj = cls(kind=str(f["kind"]), metric=str(f["metric"]))
                obj.index, obj.ids = faiss_module().deserialize_index(f["index"]), f["ids"]
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a GalleryIndex file (expected keys index, ids, kind, metric): {e}") from e
        return obj


def evaluate_topk(q_pids, g_pids, q_camids, g_camids, qf: ArrayLike, index: GalleryIndex, k: int = 50,
                  ap_mode: str = "anchor", ranks: Sequence[int] = (1, 5, 10, 20)) -> Dict[str, Any]:
    """Market-protocol evaluation from a top-k search (galleries too large for distance matrices).

    ``index`` must hold the gallery with ids = gallery positions (the default of :meth:`GalleryIndex.add`). Each
    query is searched for ``k`` plus its number of junk items (same pid and camera, known from the labels), so that
    ``k`` kept items remain. What is exact and what is not:

    * CMC up to rank k is exact with a ``flat`` index (up to the order faiss gives exact ties); approximate with
      ``ivf`` / ``hnsw`` (whatever they miss);
    * ``mAP@k`` sums the AP terms of the hits within the first k kept items and divides by the query's full number
      of positives R: a lower bound of the full AP, equal to it when all R positives rank within k;
    * mINP needs the rank of the last positive and is not reported.
    """
    q_pids, q_camids = labels(q_pids, "q_pids"), labels(q_camids, "q_camids", len(q_pids))
    g_pids, g_camids = labels(g_pids, "g_pids", len(index)), labels(g_camids, "g_camids", len(index))
    if max(ranks) > k:
        raise ValueError(f"ranks {list(ranks)} go beyond k={k}")
    same = same_pid_index(g_pids, q_pids)
    same_cam = (same >= 0) & (g_camids[same.clip(min=0)] == q_camids[:, None])
    num_pos = ((same >= 0) & ~same_cam).sum(1)
    depth = min(k + int(same_cam.sum(1).max(initial=0)), len(index))
    _, idx = index.search(qf, depth)
    found = idx >= 0
    gi = idx.clip(min=0)
    is_same = found & (g_pids[gi] == q_pids[:, None])
    kept = found & ~(is_same & (g_camids[gi] == q_camids[:, None]))
    rank = np.cumsum(kept, 1)  # 1-based rank among kept items
    hit = kept & is_same & (rank <= k)
    i = np.cumsum(hit, 1)
    ap_term = AP_MODES.get(ap_mode)  # the same AP terms as the exact evaluator
    terms = ap_term(torch.from_numpy(i.astype(np.float64)), torch.from_numpy(rank.astype(np.float64))).numpy()
    ok = num_pos > 0
    if not ok.any():
        raise ValueError("no query has a matching gallery item (same pid, other camera): nothing to evaluate")
    ap = np.where(hit, terms, 0.0).sum(1)[ok] / num_pos[ok]
    first = np.where(hit.any(1), np.where(hit, rank, np.iinfo(np.int64).max).min(1), k + 1)[ok]
    out = {f"R{r}": float(np.mean(first <= r)) for r in ranks}
    counts = {"num_valid_q": int(ok.sum()), "num_skipped_q": int((~ok).sum())}
    return {f"mAP@{k}": float(ap.mean()), **out, "k": k, **counts}


def _read_feats(path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    if not os.path.isfile(path):
        raise SystemExit(f"esreid search: {path}: file not found")
    with np.load(path, allow_pickle=False) as f:
        if "feats" not in f:
            raise SystemExit(f"esreid search: {path}: expected an array 'feats' (N, D) (and optional 'ids'), "
                             f"found keys {sorted(f.keys())}")
        return f["feats"], (f["ids"] if "ids" in f else None)


def search_main(argv: Optional[Sequence[str]] = None) -> int:
    """``esreid search``: index a gallery (or load a saved index) and write the top-k of every query."""
    p = argparse.ArgumentParser(prog="esreid search", description=search_main.__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gallery", help=".npz with 'feats' (N, D) and optional integer 'ids' (N,)")
    src.add_argument("--load-index", help="a GalleryIndex .npz written by --save-index")
    p.add_argument("--query", required=True, help=".npz with 'feats' (M, D)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--index", default="flat", choices=INDEX_KINDS.names())
    p.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    p.add_argument("--save-index", help="write the built index here (.npz)")
    p.add_argument("--output", help="write dist (M, k) and ids (M, k) here (.npz); default: print them")
    args = p.parse_args(argv)
    if args.gallery:
        feats, ids = _read_feats(args.gallery)
        index = GalleryIndex(kind=args.index, metric=args.metric).add(feats, ids)
    else:
        index = GalleryIndex.load(args.load_index)
    if args.save_index:
        index.save(args.save_index)
    dist, ids = index.search(_read_feats(args.query)[0], args.k)
    if args.output:
        np.savez(args.output, dist=dist, ids=ids)
        print(f"wrote top-{args.k} of {len(ids)} queries to {args.output}")
    else:
        for q, (d, i) in enumerate(zip(dist, ids)):
            print(f"query {q}: " + " ".join(f"{a}:{b:.4f}" for a, b in zip(i, d)))
    return 0
