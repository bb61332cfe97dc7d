"""Why did the model rank these gallery images first? (ES-Net §III-B, Figs. 1 and 5): ``esreid explain`` /
``visualize`` (:func:`explain`, :func:`visualize`), the explanations of a run's report (:func:`report_grids`) and of
the demo's comparison page (:func:`explanation_grids`).

For a trained model (opened by :func:`esreid.engine.session.open_trained`, placed as ``esreid eval`` places it) and
some queries of the configured dataset (by index, drawn at random, or image files), the gallery is ranked exactly as
``esreid eval`` ranks it: features by the model's retrieval rule, flip included
(:func:`esreid.engine.evaluator.extract_items`), distances and ties of :mod:`esreid.evaluation.distance`. CG-RAM
explains the ranked similarity itself (:func:`esreid.erasing.cgram.cgram_pair`, docs/methods.md §1.2), at the model's
``saliency_layer`` or any named module, BatchNorm outputs included. The results go to :mod:`esreid.viz.explain` as
:class:`~esreid.viz.explain.Ranked` records to be drawn.

A second model (``compare``) is drawn under the first for the same queries, each with its own top-k and maps;
``where="differ"`` keeps the queries whose rank-1 differs between the two, ``where="wrong"`` those whose rank-1 is a
false match for the first model. ``maps=False`` draws rank grids only (no gradient pass: many queries at once).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from esreid.data.base import ImageItem
from esreid.errors import EsreidError
from esreid.viz.explain import Query, Ranked, draw_explanations, rank_row, ranked_json, summary
from esreid.viz.ranklist import match_labels

RANK_CHUNK = 1024  # queries ranked at a time (bounds the distance block at RANK_CHUNK x gallery floats)
REPORT_QUERIES, REPORT_TOP_K = 3, 5


class ExplainError(EsreidError, ValueError):
    """An ``esreid explain`` request that cannot be met (query index out of range, no gallery, nothing to compare)."""


class Explainer:
    """A trained model ready to rank a gallery and explain the ranking.

    Args:
        name: the model's name in row titles.
        model: a :class:`~esreid.models.base.ReIDModel` on ``device``, placed as the evaluator's
            (:func:`~esreid.engine.session.open_trained`).
        cfg: its config (image size, normalisation, test loader, amp, channels_last).
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
    """Which queries ``where`` keeps, from each model's rank-1 gallery rows (Q,) (:func:`protocol_rank1`):
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
def explanation_grids(explainers: Sequence[Explainer], dataset, query_feats: Sequence[Tensor],
                      gallery_feats: Sequence[Tensor], queries: Sequence[Query], k: int = REPORT_TOP_K,
                      tile_height: int = 128) -> Dict[str, bytes]:
    """PNG per query (caption: the query's name) of every explainer's top-``k`` with CG-RAM maps, the models one
    under another; ``query_feats[m]`` (Q, D) are model m's features of ``queries`` and ``gallery_feats[m]`` of the
    whole gallery (e.g. those of the evaluation just run)."""
    ranked = [e.explain(queries, qf, dataset.gallery, gf, k) for e, qf, gf in zip(explainers, query_feats,
                                                                                 gallery_feats)]
    return draw_explanations(explainers, queries, ranked, dataset.gallery, tile_height)


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


def load_configs(config: str, weights: str, overrides: Sequence[str], compare: Optional[str],
                 compare_config: Optional[str], where: str) -> Tuple[list, List[str]]:
    """The configs and checkpoints of the explained model(s); the second model must rank the same gallery."""
    from esreid.config import load_config

    cfgs, paths = [load_config(config, overrides)], [weights]
    if compare:
        cfgs.append(load_config(compare_config or config, overrides))
        paths.append(compare)
        same = ("name", "root", "args")
        a, b = cfgs[0].data, cfgs[1].data
        if any(getattr(a, key) != getattr(b, key) for key in same):
            raise ExplainError(f"--compare-config {compare_config}: its dataset (data.name/root/args = {b.name}, "
                               f"{b.root}, {b.args}) differs from --config's ({a.name}, {a.root}, {a.args}); the "
                               "two models must rank the same gallery")
    elif compare_config:
        raise ExplainError("--compare-config needs --compare W2.pth (the second model's weights)")
    if where == "differ" and not compare:
        raise ExplainError("--where differ compares two models: add --compare W2.pth")
    return cfgs, paths


def explain(config: str, weights: str, overrides: Sequence[str] = (), *, query_files: Sequence[str] = (),
            query_index: Optional[Sequence[int]] = None, num_queries: Optional[int] = None, seed: int = 0,
            where: str = "any", k: int = 10, layer: str = "", maps: bool = True, compare: Optional[str] = None,
            compare_config: Optional[str] = None, out: Optional[str] = None, batch_size: int = 32,
            tile_height: int = 128) -> Dict[str, Any]:
    """``esreid explain`` (its options: ``esreid explain --help``): rank the gallery for some queries as ``esreid
    eval`` does, explain each top-``k`` with CG-RAM and write one PNG per query, ``index.html`` and ``ranked.json``
    to ``out`` (default ``explain/`` next to ``weights``). Prints a line per query. Returns ``{"index": page,
    "ranked": the ranked.json dict}``."""
    from esreid.data.base import build_dataset
    from esreid.engine.session import open_trained
    from esreid.files import atomic_write
    from esreid.viz.ranklist import write_rank_pages

    cfgs, paths = load_configs(config, weights, overrides, compare, compare_config, where)
    first = open_trained(cfgs[0], paths[0])
    cfg, device = first.cfg, first.device
    dataset = build_dataset(cfg.data.name, cfg.data.root, verbose=False, **cfg.data.args)
    print(dataset.summary())
    if not dataset.gallery:
        raise ExplainError(f"{cfg.data.name}: the dataset has no fixed gallery (its protocol draws one per trial); "
                           "explain ranks a gallery: use a dataset with a gallery split")
    candidates = file_queries(dataset, query_files) if query_files else dataset_queries(dataset, query_index)
    n = num_queries if num_queries or query_files or query_index else 8
    sessions = [first] + [open_trained(c, w, device=device) for c, w in zip(cfgs[1:], paths[1:])]
    explainers = [Explainer(name, s.model, s.cfg, s.device, layer, batch_size)
                  for name, s in zip(model_names(cfgs, paths), sessions)]
    if maps:
        for e in explainers:
            e.check_layer()
    gfs = [e.features(dataset.gallery, f"{e.name}: gallery features") for e in explainers]
    if where == "any":
        queries = [candidates[i] for i in draw(len(candidates), n, seed)]
        qfs = [e.features([q.item for q in queries], f"{e.name}: query features", query=True) for e in explainers]
    else:
        all_qfs = [e.features([q.item for q in candidates], f"{e.name}: query features", query=True)
                   for e in explainers]
        picked = select_queries(explainers, candidates, all_qfs, gfs, dataset.gallery, where, n, seed)
        queries = [candidates[i] for i in picked]
        qfs = [qf[picked] for qf in all_qfs]
    results = [e.explain(queries, qf, dataset.gallery, gf, k, maps) for e, qf, gf in zip(explainers, qfs, gfs)]
    out = out or os.path.join(os.path.dirname(os.path.abspath(weights)), "explain")
    pages = {q.name: [rank_row(e, q, res[i], dataset.gallery) for e, res in zip(explainers, results)]
             for i, q in enumerate(queries)}
    title = " vs ".join(e.name for e in explainers) + f" on {cfg.data.name}"
    index = write_rank_pages(out, pages, title=f"esreid explain: {title}", tile_height=tile_height)
    ranked = ranked_json(explainers, paths, queries, results, dataset.gallery)
    atomic_write(os.path.join(out, "ranked.json"), json.dumps(ranked, indent=1))
    for i, q in enumerate(queries):
        print(summary(q, explainers, [res[i] for res in results]))
    if any(c.test.rerank for c in cfgs):
        print("note: test.rerank is on: esreid eval re-ranks these lists; explain shows (and explains) the feature "
              "ranking before re-ranking")
    drawn = "no maps" if not maps else "CG-RAM at " + ", ".join(sorted({e.layer for e in explainers}))
    print(f"wrote {len(queries)} ranked lists (top-{min(k, len(dataset.gallery))}, {drawn}) to {index}; "
          f"the ranked lists as JSON: {os.path.join(out, 'ranked.json')}")
    return {"index": index, "ranked": ranked}


def visualize(config: str, weights: str, query: str, gallery: str, out: str, overrides: Sequence[str] = (), *,
              layer: str = "", device: Optional[str] = None, tile_height: int = 192) -> float:
    """``esreid visualize``: one (query, gallery) pair explained, drawn as a one-match row of ``esreid explain`` and
    written to the PNG ``out``; ``device`` overrides ``cfg.device``. Returns the printed score."""
    from esreid.engine.session import open_trained
    from esreid.files import atomic_write
    from esreid.viz.ranklist import draw_rank_grid

    s = open_trained(config, weights, overrides, device=device)
    e = Explainer(s.cfg.model.name, s.model, s.cfg, s.device, layer)
    images = e.load([query, gallery])
    mq, mg, sim = e.maps(images[:1], images[1:])
    score = float(sim[0]) if e.cosine else -float(sim[0])
    ranked = Ranked(np.zeros(1, dtype=np.int64), np.array([score]), ["neutral"], images[0], images[1:], mq, mg, sim)
    row = rank_row(e, Query(query), ranked, [ImageItem(gallery, None, None)])
    atomic_write(out, draw_rank_grid([row], tile_height=tile_height).png())
    rule = e.model.retrieval
    print(f"{e.score_name} of the ranked features (flip={rule.flip}, normalize={rule.normalize}): {score:.4f}; "
          f"CG-RAM at '{e.layer}' written to {out}")
    return score
