"""Pictures of explained rankings (``esreid explain`` / ``visualize``, the run report, the demo's comparison page):
the records the engine fills (:class:`Query`, :class:`Ranked`) and how they are drawn and written.

Nothing here computes a ranking or a map: :mod:`esreid.engine.explain` ranks the gallery exactly as ``esreid eval``
does and runs CG-RAM, then passes each model's :class:`Ranked` lists here. A drawn model is anything with ``name``,
``layer`` (the CG-RAM layer) and ``score_name`` (what its scores are), e.g. an
:class:`esreid.engine.explain.Explainer`. Each query is drawn with its top-k matches (:mod:`esreid.viz.ranklist`):
the score under each match, green / red / grey borders (true match, false match, junk: same identity and camera), and
two CG-RAM strips: the map of each gallery image and the map of the query, both for the similarity of that pair.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence

import numpy as np
from torch import Tensor

from esreid.data.base import ImageItem
from esreid.viz.ranklist import LEGEND, Match, RankRow, draw_rank_grid

NBSP = "\u00a0"


class DrawnModel(Protocol):
    """What a picture says about a model: its row title, CG-RAM layer and score name."""

    name: str
    layer: str
    score_name: str


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


def rank_row(model: DrawnModel, query: Query, ranked: Ranked, gallery: Sequence[ImageItem]) -> RankRow:
    """The :class:`~esreid.viz.ranklist.RankRow` of one query's ranked list, titled with the model's name."""
    matches = [Match(ranked.gallery_images[j], float(ranked.scores[j]), ranked.labels[j],
                     map=None if ranked.gallery_maps is None else ranked.gallery_maps[j],
                     query_map=None if ranked.query_maps is None else ranked.query_maps[j],
                     caption=caption(gallery[r].pid, gallery[r].camid, NBSP)) for j, r in enumerate(ranked.rows)]
    title = model.name + (f" (CG-RAM at {model.layer})" if ranked.query_maps is not None else "")
    return RankRow(ranked.query_image, matches, title=title, query_caption=caption(query.pid, query.camid, NBSP),
                   score_name=model.score_name)


def draw_explanations(models: Sequence[DrawnModel], queries: Sequence[Query], ranked: Sequence[Sequence[Ranked]],
                      gallery: Sequence[ImageItem], tile_height: int = 128) -> Dict[str, bytes]:
    """PNG per query (caption: the query's name) of every model's ranked list (``ranked[m][i]``: model m's list for
    query i), the models one under another."""
    return {q.name: draw_rank_grid([rank_row(m, q, r[i], gallery) for m, r in zip(models, ranked)],
                                   tile_height).png() for i, q in enumerate(queries)}


def ranked_json(models: Sequence[DrawnModel], weights: Sequence[str], queries: Sequence[Query],
                results: Sequence[Sequence[Ranked]], gallery: Sequence[ImageItem]) -> dict:
    """``ranked.json`` of ``esreid explain``: the models and, per query, each model's ranked matches."""

    def match(r, j):
        it = gallery[r.rows[j]]
        return {"rank": j + 1, "row": int(r.rows[j]), "path": it.path, "pid": it.pid, "camid": it.camid,
                "score": float(r.scores[j]), "label": r.labels[j]}

    return {
        "models": [{"name": m.name, "weights": w, "layer": m.layer, "score": m.score_name}
                   for m, w in zip(models, weights)],
        "queries": [{"name": q.name, "path": q.path, "pid": q.pid, "camid": q.camid, "index": q.index,
                     "ranked": [[match(res[i], j) for j in range(len(res[i].rows))] for res in results]}
                    for i, q in enumerate(queries)],
    }


def summary(q: Query, models: Sequence[DrawnModel], results_i: Sequence[Ranked]) -> str:
    """``query 3 (id 17 cam 1): esnet: R1 true match (#2, 0.912), first true match #2 | ...``: the image R1 counts
    (the first that is not junk) and where the first true match is."""
    parts = []
    for m, r in zip(models, results_i):
        if q.pid is None:
            parts.append(f"{m.name}: #1 {r.scores[0]:.3f} (identity unknown)")
            continue
        j = next((j for j, lab in enumerate(r.labels) if lab != "junk"), None)
        first = next((j + 1 for j, lab in enumerate(r.labels) if lab == "match"), None)
        r1 = ("R1 beyond the top-k (all junk)" if j is None else
              f"R1 {LEGEND[r.labels[j]]} (#{j + 1}, {r.scores[j]:.3f})")
        parts.append(f"{m.name}: {r1}, " + (f"first true match #{first}" if first else "no true match in the top-k"))
    return f"{q.name}: " + " | ".join(parts)
