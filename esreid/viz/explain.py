"""``esreid explain``: why did the model rank these gallery images first? (ES-Net §III-B, Figs. 1 and 5)

For a trained model and some queries of the configured dataset (by index, drawn at random, or image files), the
gallery is ranked exactly as ``esreid eval`` ranks it: features by the model's retrieval rule, flip included
(:func:`esreid.engine.evaluator.extract_items`), distances and ties of :mod:`esreid.evaluation.distance`. Each query
is drawn with its top-k matches (:mod:`esreid.viz.ranklist`): the score under each match, green / red / grey
borders (true match, false match, junk: same identity and camera), and two CG-RAM strips: the map of each gallery
image and the map of the query, both for the similarity of that pair (docs/methods.md §1.2). The maps explain the
ranked similarity itself (:func:`esreid.erasing.cgram.cgram_pair`), at the model's ``saliency_layer`` or any named
module, BatchNorm outputs included.

``--compare`` draws a second model under the first for the same queries, each with its own top-k and maps;
``--where differ`` keeps the queries whose rank-1 differs between the two, ``--where wrong`` those whose rank-1 is a
false match for the first model. ``--no-maps`` draws rank grids only (no gradient pass: many queries at once).
``esreid visualize`` (:func:`visualize_main`) is the one-pair case, drawn the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from esreid.data.base import ImageItem
from esreid.errors import EsreidError
from esreid.viz.ranklist import LEGEND, Match, RankRow, match_labels

NBSP = "\u00a0"
RANK_CHUNK = 1024  # queries ranked at a time (bounds the distance block at RANK_CHUNK x gallery floats)


class ExplainError(EsreidError, ValueError):
    """An ``esreid explain`` request that cannot be met (query index out of range, no gallery, nothing to compare)."""


@dataclass(frozen=True)
class Query:
    """A query image: ``pid`` / ``camid`` None when its identity is unknown (a file from outside the dataset);
    ``index``: its row in the dataset's query split, if it is one."""

    path: str
    pid: Optional[int] = None
    camid: Optional[int] = None
    index: Optional[int] = None

    @property
    def name(self) -> str:
        where = f"query {self.index}" if self.index is not None else os.path.basename(self.path)
        return f"{where} ({caption(self.pid, self.camid) or 'identity unknown'})"

    @property
    def item(self) -> ImageItem:
        return ImageItem(self.path, -1 if self.pid is None else self.pid, -1 if self.camid is None else self.camid)


def caption(pid: Optional[int], camid: Optional[int], sep: str = " ") -> str:
    """``"id 12 cam 3"`` (the dataset's ids and 0-based cameras, as esreid search prints them); ``""`` if unknown.
    ``sep`` joins each word to its number (a no-break space keeps them on one line in a grid)."""
    return "" if pid is None else f"id{sep}{pid} cam{sep}{camid}"


@dataclass
class Ranked:
    """One model's top-k for one query: gallery ``rows`` (k,) best first, ``scores`` (k,) as printed (cosine
    similarity, or squared Euclidean distance), ``labels`` (match | false | junk | neutral: identity unknown), the
    uint8 images drawn (``query_image`` (3, H, W), ``gallery_images`` (k, 3, H, W)) and, with maps, the CG-RAM maps
    (k, h, w) of the query and of each gallery image for that pair plus ``similarities`` (k,), CG-RAM's own value of
    the explained similarity (:func:`~esreid.erasing.cgram.cgram_pair`: cos, or minus the squared distance)."""

    rows: np.ndarray
    scores: np.ndarray
    labels: List[str]
    query_image: Tensor
    gallery_images: Tensor
    query_maps: Optional[Tensor] = None
    gallery_maps: Optional[Tensor] = None
    similarities: Optional[Tensor] = None


class Explainer:
    """A trained model ready to rank a gallery and explain the ranking.

    Args:
        name: the model's name in row titles.
        model: a :class:`~esreid.models.base.ReIDModel` on ``device``.
        cfg: its config (image size, normalisation, test loader, amp).
        device: where features and maps are computed.
        layer: CG-RAM layer (a module name; "" = ``model.saliency_layer``); an unknown name raises
            :class:`~esreid.erasing.cgram.LayerError` at once.
        batch_size: (query, gallery) pairs per CG-RAM pass.
    """

    def __init__(self, name: str, model: torch.nn.Module, cfg, device: torch.device, layer: str = "",
                 batch_size: int = 32):
        from esreid.data.transforms import TestTransform
        from esreid.erasing.cgram import resolve_layer

        self.name, self.model, self.cfg, self.device = name, model, cfg, device
        self.layer = layer or model.saliency_layer
        self.batch_size = batch_size
        self.transform = TestTransform(cfg.data)
        resolve_layer(model, self.layer)
        # queries are read from their files (identical pixels to the cache), never cached: a cache of an arbitrary
        # list of queries would only fill the cache folder
        self.query_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache=False))

    @property
    def cosine(self) -> bool:
        return self.model.retrieval.metric == "cosine"

    @property
    def score_name(self) -> str:
        return "cosine similarity" if self.cosine else "squared Euclidean distance"

    # --- ranking --------------------------------------------------------------------------------------------------
    def features(self, items: Sequence[ImageItem], desc: str, query: bool = False) -> Tensor:
        """Retrieval features (N, D) of ``items``, as the evaluator extracts them."""
        from esreid.engine.evaluator import extract_items

        return extract_items(self.model, items, self.query_cfg if query else self.cfg, self.device, desc)[0]

    def rank(self, qf: Tensor, gf: Tensor, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest gallery rows of each query, as the evaluator ranks them (the model's metric, ties by
        gallery row): rows (Q, k) int64 and their scores (Q, k) float64 (cosine similarity ``1 - d``, or the
        squared Euclidean distance ``d``)."""
        from esreid.evaluation.distance import METRICS, as_features, smallest_k

        metric = METRICS.get(self.model.retrieval.metric)
        g = metric.prepare(as_features(gf, "gallery features"))
        qf = as_features(qf, "query features")
        rows, dists = [], []
        for start in range(0, len(qf), RANK_CHUNK):
            d = metric.distance(metric.prepare(qf[start:start + RANK_CHUNK]), g)
            idx = smallest_k(d, k)
            rows.append(idx)
            dists.append(d.gather(1, idx))
        d = torch.cat(dists).double().numpy() if dists else np.zeros((0, k))
        r = torch.cat(rows).numpy() if rows else np.zeros((0, k), dtype=np.int64)
        return r, (1.0 - d if self.cosine else d)

    # --- CG-RAM ---------------------------------------------------------------------------------------------------
    def load(self, paths: Sequence[str]) -> Tensor:
        """uint8 (N, 3, H, W) images at the model's input size (the loaders' decoding and resizing)."""
        from esreid.data.transforms import decode_resize

        h, w = self.cfg.data.height, self.cfg.data.width
        return torch.stack([decode_resize(p, h, w) for p in paths]) if paths else torch.zeros(0, 3, h, w,
                                                                                                dtype=torch.uint8)

    def maps(self, queries: Tensor, galleries: Tensor, desc: str = "CG-RAM") -> Tuple[Tensor, Tensor, Tensor]:
        """CG-RAM of the pairs (queries[i], galleries[i]), uint8 (P, 3, H, W) each, ``batch_size`` pairs per pass:
        maps of the queries (P, h, w), of the galleries (P, h, w) and the explained similarities (P,), on the CPU."""
        from esreid.console import progress
        from esreid.erasing.cgram import cgram_pair

        out: List[Tuple[Tensor, Tensor, Tensor]] = []
        starts = range(0, len(queries), self.batch_size)
        for s in progress(starts, desc, total=len(starts), unit="pass"):
            q = self.transform(queries[s:s + self.batch_size].to(self.device))
            g = self.transform(galleries[s:s + self.batch_size].to(self.device))
            out.append(tuple(t.float().cpu() for t in cgram_pair(self.model, q, g, self.layer)))
        return tuple(torch.cat(parts) for parts in zip(*out))

    def check_layer(self) -> None:
        """Run CG-RAM once on a blank pair: a layer that does not output a map, or runs more than once per forward
        pass, raises :class:`~esreid.erasing.cgram.LayerError` now, before the gallery is extracted."""
        blank = torch.zeros(1, 3, self.cfg.data.height, self.cfg.data.width, dtype=torch.uint8)
        self.maps(blank, blank)

    # --- one model's ranked lists ---------------------------------------------------------------------------------
    def explain(self, queries: Sequence[Query], qf: Tensor, gallery: Sequence[ImageItem], gf: Tensor, k: int,
                with_maps: bool = True) -> List[Ranked]:
        """The top-``k`` of each query (features ``qf`` (Q, D) against the ``gallery`` items' ``gf`` (N, D)), with
        its images and, ``with_maps``, the CG-RAM maps of every (query, match) pair (all pairs batched)."""
        k = min(k, len(gallery))
        rows, scores = self.rank(qf, gf, k)
        g_pids = np.array([it.pid for it in gallery])
        g_cams = np.array([it.camid for it in gallery])
        q_images = self.load([q.path for q in queries])
        g_images = self.load([gallery[r].path for r in rows.reshape(-1)]).view(len(queries), k, *q_images.shape[1:])
        out = []
        for i, q in enumerate(queries):
            labels = (["neutral"] * k if q.pid is None else
                      match_labels(q.pid, q.camid, g_pids[rows[i]], g_cams[rows[i]]))
            out.append(Ranked(rows[i], scores[i], labels, q_images[i], g_images[i]))
        if with_maps and len(queries):
            mq, mg, s = self.maps(q_images.repeat_interleave(k, 0), g_images.reshape(-1, *q_images.shape[1:]))
            for i, r in enumerate(out):
                pairs = slice(i * k, (i + 1) * k)
                r.query_maps, r.gallery_maps, r.similarities = mq[pairs], mg[pairs], s[pairs]
        return out

    def row(self, query: Query, ranked: Ranked, gallery: Sequence[ImageItem]) -> RankRow:
        """The :class:`~esreid.viz.ranklist.RankRow` of one query's ranked list, titled with the model's name."""
        matches = [Match(ranked.gallery_images[j], float(ranked.scores[j]), ranked.labels[j],
                         map=None if ranked.gallery_maps is None else ranked.gallery_maps[j],
                         query_map=None if ranked.query_maps is None else ranked.query_maps[j],
                         caption=caption(gallery[r].pid, gallery[r].camid, NBSP)) for j, r in enumerate(ranked.rows)]
        title = self.name + (f" (CG-RAM at {self.layer})" if ranked.query_maps is not None else "")
        return RankRow(ranked.query_image, matches, title=title, query_caption=caption(query.pid, query.camid, NBSP),
                       score_name=self.score_name)


# ----------------------------------------------------------------------------------------------------------------
# Choosing queries
# ----------------------------------------------------------------------------------------------------------------
def dataset_queries(dataset, indices: Optional[Sequence[int]] = None) -> List[Query]:
    """Queries of the dataset's query split (all, or the given rows; a row out of range raises ExplainError)."""
    n = len(dataset.query)
    indices = range(n) if indices is None else indices
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        name = dataset.name or type(dataset).__name__
        raise ExplainError(f"--query-index {bad[0]} is out of range: the query split of {name} has {n} images "
                           f"(indices 0..{n - 1})")
    return [Query(dataset.query[i].path, dataset.query[i].pid, dataset.query[i].camid, i) for i in indices]


def file_queries(dataset, paths: Sequence[str]) -> List[Query]:
    """Queries from image files: the identity and camera of a file of the dataset's query or gallery split are
    known (so its matches are labelled); any other file is a query of unknown identity."""
    known = {os.path.realpath(it.path): it for it in [*dataset.gallery, *dataset.query]}
    items = [known.get(os.path.realpath(p)) for p in paths]
    return [Query(p) if it is None else Query(p, it.pid, it.camid) for p, it in zip(paths, items)]


def draw(count: int, n: Optional[int], seed: int) -> np.ndarray:
    """Positions of ``n`` of ``count`` candidates drawn without replacement by ``numpy.random.default_rng(seed)``,
    ascending (all of them when ``n`` is None or not smaller)."""
    if n is None or n >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=n, replace=False))


def protocol_rank1(explainer: Explainer, queries: Sequence[Query], qf: Tensor, gallery, gf: Tensor) -> np.ndarray:
    """The gallery row (Q,) each query's R1 counts: the best-ranked image that is not junk (same identity and
    camera as the query, which the Market protocol skips)."""
    g_pids = np.array([it.pid for it in gallery])
    g_cams = np.array([it.camid for it in gallery])
    junk = [0 if q.pid is None else int(np.sum((g_pids == q.pid) & (g_cams == q.camid))) for q in queries]
    rows, _ = explainer.rank(qf, gf, min(len(gallery), 1 + max(junk, default=0)))
    out = rows[:, 0].copy()
    for i, q in enumerate(queries):
        if q.pid is not None:
            valid = rows[i][(g_pids[rows[i]] != q.pid) | (g_cams[rows[i]] != q.camid)]
            out[i] = valid[0] if len(valid) else rows[i, 0]
    return out


def where_mask(where: str, rank1: Sequence[np.ndarray], queries: Sequence[Query], gallery) -> np.ndarray:
    """Which queries ``--where`` keeps, from each model's rank-1 gallery rows (Q,) (:func:`protocol_rank1`):
    ``differ`` (the two models' rank-1 differ), ``wrong`` (the first model's rank-1 is a false match), ``any``."""
    if where == "differ":
        return rank1[0] != rank1[1]
    if where == "wrong":
        return np.array([q.pid is not None and gallery[r].pid != q.pid for q, r in zip(queries, rank1[0])], dtype=bool)
    return np.ones(len(queries), dtype=bool)


def select_queries(explainers: Sequence[Explainer], queries: Sequence[Query], query_feats: Sequence[Tensor],
                   gallery_feats: Sequence[Tensor], gallery, where: str, n: Optional[int], seed: int) -> np.ndarray:
    """Positions in ``queries`` of those ``where`` keeps (:func:`where_mask` on each model's rank-1, junk skipped,
    from the features ``query_feats[m]`` (Q, D) and ``gallery_feats[m]``), then ``n`` of them drawn with ``seed``
    (:func:`draw`). Raises ExplainError when ``where`` keeps none."""
    rank1 = [protocol_rank1(e, queries, qf, gallery, gf) for e, qf, gf in zip(explainers, query_feats, gallery_feats)]
    keep = np.flatnonzero(where_mask(where, rank1, queries, gallery))
    if not len(keep):
        what = ("the two models rank the same gallery image first (junk skipped)" if where == "differ" else
                "the first model's rank-1 (junk skipped) is a true match or the identity is unknown")
        raise ExplainError(f"--where {where}: {what} for all {len(queries)} queries; nothing to draw (drop --where to "
                           "draw any queries)")
    return keep[draw(len(keep), n, seed)]


# ----------------------------------------------------------------------------------------------------------------
# Explanations of a run (report.html) and of two runs (the demo's comparison page)
# ----------------------------------------------------------------------------------------------------------------
REPORT_QUERIES, REPORT_TOP_K = 3, 5


def explanation_grids(explainers: Sequence[Explainer], dataset, query_feats: Sequence[Tensor],
                      gallery_feats: Sequence[Tensor], queries: Sequence[Query], k: int = REPORT_TOP_K,
                      tile_height: int = 128) -> Dict[str, bytes]:
    """PNG per query (caption: the query's name) of every explainer's top-``k`` with CG-RAM maps, the models one
    under another; ``query_feats[m]`` (Q, D) are model m's features of ``queries`` and ``gallery_feats[m]`` of the
    whole gallery (e.g. those of the evaluation just run)."""
    from esreid.viz.ranklist import draw_rank_grid

    ranked = [e.explain(queries, qf, dataset.gallery, gf, k) for e, qf, gf in zip(explainers, query_feats,
                                                                                 gallery_feats)]
    return {q.name: draw_rank_grid([e.row(q, r[i], dataset.gallery) for e, r in zip(explainers, ranked)],
                                   tile_height).png() for i, q in enumerate(queries)}


def report_grids(model: torch.nn.Module, cfg, device: torch.device, dataset, features,
                 num: int = REPORT_QUERIES, k: int = REPORT_TOP_K) -> Dict[str, bytes]:
    """The explanations of a run's report: ``num`` queries of the dataset (always the same ones: drawn with seed 0),
    their top-``k`` with CG-RAM maps at the model's saliency layer, ranked with ``features`` (the
    :class:`~esreid.engine.evaluator.EvalFeatures` of the evaluation just run). Empty without a gallery."""
    if not dataset.gallery or not dataset.query:
        return {}
    queries = [dataset_queries(dataset)[i] for i in draw(len(dataset.query), num, seed=0)]
    explainer = Explainer(cfg.model.name, model, cfg, device)
    qf = features.query[0][[q.index for q in queries]]
    return explanation_grids([explainer], dataset, [qf], [features.gallery[0]], queries, k)


# ----------------------------------------------------------------------------------------------------------------
# esreid explain / esreid visualize
# ----------------------------------------------------------------------------------------------------------------
def model_names(cfgs: Sequence, weights: Sequence[str]) -> List[str]:
    """Row titles: the configs' model names, with the checkpoint's folder and file when two would be the same."""
    names = [c.model.name for c in cfgs]
    if len(set(names)) < len(names):
        names = [f"{n} ({os.path.basename(os.path.dirname(os.path.abspath(w)))}/{os.path.basename(w)})"
                 for n, w in zip(names, weights)]
    return names


def _load_configs(args: argparse.Namespace) -> Tuple[list, List[str]]:
    from esreid.config import load_config

    cfgs, weights = [load_config(args.config, args.overrides)], [args.weights]
    if args.compare:
        cfgs.append(load_config(args.compare_config or args.config, args.overrides))
        weights.append(args.compare)
        same = ("name", "root", "args")
        a, b = cfgs[0].data, cfgs[1].data
        if any(getattr(a, key) != getattr(b, key) for key in same):
            raise ExplainError(f"--compare-config {args.compare_config}: its dataset (data.name/root/args = {b.name}, "
                               f"{b.root}, {b.args}) differs from --config's ({a.name}, {a.root}, {a.args}); the "
                               "two models must rank the same gallery")
    elif args.compare_config:
        raise ExplainError("--compare-config needs --compare W2.pth (the second model's weights)")
    if args.where == "differ" and not args.compare:
        raise ExplainError("--where differ compares two models: add --compare W2.pth")
    return cfgs, weights


def _ranked_json(explainers, weights, queries, results, gallery) -> dict:
    def match(e, r, j):
        it = gallery[r.rows[j]]
        return {"rank": j + 1, "row": int(r.rows[j]), "path": it.path, "pid": it.pid, "camid": it.camid,
                "score": float(r.scores[j]), "label": r.labels[j]}

    return {
        "models": [{"name": e.name, "weights": w, "layer": e.layer, "score": e.score_name}
                   for e, w in zip(explainers, weights)],
        "queries": [{"name": q.name, "path": q.path, "pid": q.pid, "camid": q.camid, "index": q.index,
                     "ranked": [[match(e, res[i], j) for j in range(len(res[i].rows))]
                                for e, res in zip(explainers, results)]} for i, q in enumerate(queries)],
    }


def _summary(q: Query, explainers, results_i: Sequence[Ranked]) -> str:
    """``query 3 (id 17 cam 1): esnet: R1 true match (#2, 0.912), first true match #2 | ...``: the image R1 counts
    (the first that is not junk) and where the first true match is."""
    parts = []
    for e, r in zip(explainers, results_i):
        if q.pid is None:
            parts.append(f"{e.name}: #1 {r.scores[0]:.3f} (identity unknown)")
            continue
        j = next((j for j, lab in enumerate(r.labels) if lab != "junk"), None)
        first = next((j + 1 for j, lab in enumerate(r.labels) if lab == "match"), None)
        r1 = ("R1 beyond the top-k (all junk)" if j is None else
              f"R1 {LEGEND[r.labels[j]]} (#{j + 1}, {r.scores[j]:.3f})")
        parts.append(f"{e.name}: {r1}, " + (f"first true match #{first}" if first else "no true match in the top-k"))
    return f"{q.name}: " + " | ".join(parts)


def explain_main(args: argparse.Namespace) -> int:
    """``esreid explain`` (options: ``esreid explain --help``)."""
    from esreid.data.base import build_dataset
    from esreid.engine.checkpoint import load_trained_model
    from esreid.engine.threads import apply_threads
    from esreid.engine.trainer import resolve_device
    from esreid.viz.images import atomic_write
    from esreid.viz.ranklist import write_rank_pages

    cfgs, weights = _load_configs(args)
    cfg = cfgs[0]
    apply_threads(cfg)
    device = resolve_device(cfg.device)
    dataset = build_dataset(cfg.data.name, cfg.data.root, verbose=False, **cfg.data.args)
    print(dataset.summary())
    if not dataset.gallery:
        raise ExplainError(f"{cfg.data.name}: the dataset has no fixed gallery (its protocol draws one per trial); "
                           "explain ranks a gallery: use a dataset with a gallery split")
    candidates = (file_queries(dataset, args.query) if args.query else
                  dataset_queries(dataset, args.query_index))
    n = args.num_queries if args.num_queries or args.query or args.query_index else 8
    explainers = [Explainer(name, load_trained_model(c, w).to(device), c, device, args.layer, args.batch_size)
                  for name, c, w in zip(model_names(cfgs, weights), cfgs, weights)]
    if not args.no_maps:
        for e in explainers:
            e.check_layer()
    gfs = [e.features(dataset.gallery, f"{e.name}: gallery features") for e in explainers]
    if args.where == "any":
        queries = [candidates[i] for i in draw(len(candidates), n, args.seed)]
        qfs = [e.features([q.item for q in queries], f"{e.name}: query features", query=True) for e in explainers]
    else:
        all_qfs = [e.features([q.item for q in candidates], f"{e.name}: query features", query=True)
                   for e in explainers]
        picked = select_queries(explainers, candidates, all_qfs, gfs, dataset.gallery, args.where, n, args.seed)
        queries = [candidates[i] for i in picked]
        qfs = [qf[picked] for qf in all_qfs]
    results = [e.explain(queries, qf, dataset.gallery, gf, args.k, not args.no_maps)
               for e, qf, gf in zip(explainers, qfs, gfs)]
    from esreid.models.backbones.weights import split_peer

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(split_peer(args.weights)[1])), "explain")
    pages = {q.name: [e.row(q, res[i], dataset.gallery) for e, res in zip(explainers, results)]
             for i, q in enumerate(queries)}
    title = " vs ".join(e.name for e in explainers) + f" on {cfg.data.name}"
    index = write_rank_pages(out, pages, title=f"esreid explain: {title}", tile_height=args.tile_height)
    atomic_write(os.path.join(out, "ranked.json"),
                 json.dumps(_ranked_json(explainers, weights, queries, results, dataset.gallery), indent=1))
    for i, q in enumerate(queries):
        print(_summary(q, explainers, [res[i] for res in results]))
    if any(c.test.rerank for c in cfgs):
        print("note: test.rerank is on: esreid eval re-ranks these lists; explain shows (and explains) the feature "
              "ranking before re-ranking")
    maps = "no maps" if args.no_maps else "CG-RAM at " + ", ".join(sorted({e.layer for e in explainers}))
    print(f"wrote {len(queries)} ranked lists (top-{min(args.k, len(dataset.gallery))}, {maps}) to {index}; "
          f"the ranked lists as JSON: {os.path.join(out, 'ranked.json')}")
    return 0


def visualize_main(args: argparse.Namespace) -> int:
    """``esreid visualize``: one (query, gallery) pair explained, drawn as a one-match row of ``esreid explain``."""
    from esreid.config import load_config
    from esreid.engine.checkpoint import load_trained_model
    from esreid.engine.threads import apply_threads
    from esreid.viz.images import atomic_write
    from esreid.viz.ranklist import draw_rank_grid

    cfg = load_config(args.config, args.overrides)
    apply_threads(cfg)
    device = torch.device(args.device)
    e = Explainer(cfg.model.name, load_trained_model(cfg, args.weights).to(device), cfg, device, args.layer)
    images = e.load([args.query, args.gallery])
    mq, mg, s = e.maps(images[:1], images[1:])
    score = float(s[0]) if e.cosine else -float(s[0])
    ranked = Ranked(np.zeros(1, dtype=np.int64), np.array([score]), ["neutral"], images[0], images[1:], mq, mg, s)
    row = e.row(Query(args.query), ranked, [ImageItem(args.gallery, None, None)])
    atomic_write(args.out, draw_rank_grid([row], tile_height=args.tile_height).png())
    rule = e.model.retrieval
    print(f"{e.score_name} of the ranked features (flip={rule.flip}, normalize={rule.normalize}): {score:.4f}; "
          f"CG-RAM at '{e.layer}' written to {args.out}")
    return 0
