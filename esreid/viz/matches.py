"""Pictures of search results (``esreid search --html / --grid``): each query next to its top-k gallery images.

* :func:`write_match_grids` (``--grid DIR``): one PNG per query drawn by :func:`~esreid.viz.ranklist.draw_rank_grid`
  (distances under the images, pid / camera captions when known) and an ``index.html`` listing them
  (:func:`~esreid.viz.ranklist.write_rank_pages`);
* :func:`write_match_html` (``--html FILE``): one page that links the original image files (paths relative to the
  page's folder; nothing copied or drawn, so it is quick for many queries), the same borders and captions in CSS.

Borders: when the query and its matches have pids, the Market labels of
:func:`~esreid.viz.ranklist.match_labels` (green true match, red false match, grey junk = same identity and camera;
an unknown camera never makes junk); otherwise slate grey ("identity unknown"). Only the queries' and their top-k
images are read, so a search on a million-item index draws as quickly as on a small one.
"""

from __future__ import annotations

import html
import os
import pathlib
import urllib.parse
from typing import Any, Dict, List, Sequence

from esreid.evaluation.search import SearchError, SearchResults
from esreid.files import atomic_write
from esreid.viz.ranklist import COLOURS, JUNK_DIM, LEGEND, Match, RankRow, match_labels, write_rank_pages

SCORE_NAMES = {"cosine": "cosine distance", "euclidean": "squared Euclidean distance"}


def labels(query: Dict[str, Any]) -> List[str]:
    """The border label of each match of one query dict of :class:`SearchResults` (module docstring)."""
    matches = query["matches"]
    if query["pid"] is None or any(m["pid"] is None for m in matches):
        return ["neutral"] * len(matches)
    unknown_q, unknown_g = -1, -2  # unknown cameras: never equal, so never junk
    q_cam = unknown_q if query["camid"] is None else query["camid"]
    g_cams = [unknown_g if m["camid"] is None else m["camid"] for m in matches]
    return match_labels(query["pid"], q_cam, [m["pid"] for m in matches], g_cams)


def caption(item: Dict[str, Any]) -> str:
    """``"id 12 cam 3"`` from a query or match dict (what is known of it), ``""`` when nothing is."""
    return " ".join(f"{name} {item[key]}" for name, key in (("id", "pid"), ("cam", "camid")) if item[key] is not None)


def check_images(results: SearchResults) -> None:
    """Every image a picture of ``results`` shows has a path and exists; else one :class:`SearchError` naming the
    first missing (before anything is drawn)."""
    for side, columns in (("query", results.query), ("gallery", results.gallery)):
        if "path" not in columns:
            raise SearchError(f"--html/--grid show images, but the {side} features come without their paths; "
                              "extract them with esreid extract (it stores the paths)")
    needed = [q["path"] for q in results] + [m["path"] for q in results for m in q["matches"]]
    missing = [p for p in dict.fromkeys(needed) if not os.path.isfile(p)]
    if missing:
        raise SearchError(f"{len(missing)} image(s) to show do not exist, e.g. {missing[0]}: the paths are the ones "
                          "esreid extract stored; were the images moved since?")


def query_name(query: Dict[str, Any], full: bool = True) -> str:
    """``"query 3: <path>"`` (the file name only unless ``full``)."""
    return f"query {query['query']}: {query['path'] if full else os.path.basename(query['path'])}"


def rank_rows(results: SearchResults) -> Dict[str, List[RankRow]]:
    """One page per query (its :func:`query_name` -> its one :class:`RankRow`: the query image, its matches best first
    with their distances, labels and captions)."""
    score_name = SCORE_NAMES[results.metric]
    pages = {}
    for q in results:
        matches = [Match(m["path"], m["distance"], label, caption=caption(m))
                   for m, label in zip(q["matches"], labels(q))]
        row = RankRow(q["path"], matches, query_caption=caption(q), score_name=score_name)
        pages[query_name(q, full=False)] = [row]
    return pages


def write_match_grids(results: SearchResults, out_dir: str, tile_height: int = 128) -> str:
    """``--grid``: one PNG per query and ``index.html`` in ``out_dir``; returns the index's path."""
    check_images(results)
    title = f"top-{results.k} of {len(results)} queries ({results.kind} index, {SCORE_NAMES[results.metric]})"
    return write_rank_pages(out_dir, rank_rows(results), title=title, tile_height=tile_height)


def image_link(path: str, page_dir: str) -> str:
    """``path`` as an ``img src`` for a page in ``page_dir``: relative (URL-quoted) where possible, else a file URI."""
    try:
        rel = os.path.relpath(os.path.abspath(path), page_dir)
    except ValueError:  # another drive (Windows)
        return pathlib.Path(os.path.abspath(path)).as_uri()
    return urllib.parse.quote(rel.replace(os.sep, "/"))


def _figure(kind: str, src: str, path: str, label: str, lines: Sequence[str], rank: int = 0) -> str:
    data = f' data-rank="{rank}"' if rank else ""
    text = "<br>".join(html.escape(line) for line in lines if line)
    return (f'<figure class="{kind}" data-label="{label}"{data}><img src="{html.escape(src)}" '
            f'alt="{html.escape(os.path.basename(path))}" title="{html.escape(path)}" loading="lazy">'
            f"<figcaption>{text}</figcaption></figure>")


def _style(tile_height: int) -> str:
    colours = "".join(f"[data-label={label}] img{{border-color:rgb{COLOURS[label]}}}" for label in COLOURS)
    return ("body{font-family:sans-serif;margin:2em}section{display:flex;flex-wrap:wrap;gap:8px;margin:0 0 1.5em}"
            "h2{font-size:1em;margin:0 0 .4em;width:100%;word-break:break-all}figure{margin:0;text-align:center;"
            f"font-size:12px}}figure img{{height:{tile_height}px;border:4px solid;display:block}}"
            f"figure.query{{margin-right:24px}}{colours}[data-label=junk] img{{opacity:{JUNK_DIM}}}"
            ".legend span{display:inline-block;margin-right:1.5em}.legend i{display:inline-block;width:1em;"
            "height:1em;margin-right:.3em;vertical-align:middle}")


def match_html(results: SearchResults, page_dir: str, tile_height: int = 128) -> str:
    """The ``--html`` page for a file in ``page_dir``: per query a ``<section data-query=i>`` holding the query's
    figure, then one figure per match (``data-rank``, ``data-label``) whose ``img src`` links the gallery file."""
    score_name = SCORE_NAMES[results.metric]
    title = f"top-{results.k} of {len(results)} queries ({results.kind} index, {score_name})"
    sections, used = [], set()
    for q in results:
        figures = [_figure("query", image_link(q["path"], page_dir), q["path"], "query", ["query", caption(q)])]
        for m, label in zip(q["matches"], labels(q)):
            used.add(label)
            lines = [f"#{m['rank']}  {m['distance']:.4f}", caption(m)]
            figures.append(_figure("match", image_link(m["path"], page_dir), m["path"], label, lines, m["rank"]))
        heading = f"<h2>{html.escape(query_name(q))}</h2>"
        sections.append(f'<section data-query="{q["query"]}">{heading}' + "".join(figures) + "</section>")
    legend = "".join(f'<span><i style="background:rgb{COLOURS[label]}"></i>{html.escape(LEGEND[label])}</span>'
                     for label in LEGEND if label in used)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_style(tile_height)}</style></head>\n<body><h1>{html.escape(title)}</h1>"
            f'<p class="legend">{legend}</p>\n' + "\n".join(sections) + "\n</body></html>\n")


def write_match_html(results: SearchResults, path: str, tile_height: int = 128) -> str:
    """``--html``: write :func:`match_html` to ``path`` atomically; returns ``path``."""
    check_images(results)
    return atomic_write(path, match_html(results, os.path.dirname(os.path.abspath(path)), tile_height))
