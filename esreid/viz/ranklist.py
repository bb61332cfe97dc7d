"""Rank grids: a query and its top-k gallery images in one row, with scores, match borders and CG-RAM overlays.

A :class:`RankRow` is one query's ranked list (the caller picks the top-k with :func:`top_k` and labels them with
:func:`match_labels`); :func:`draw_rank_grid` draws one or several rows into one image. Several rows for the same
query, one per model (``RankRow.title`` = the model name), give the model comparison layout. Per gallery image j the
row can also show the CG-RAM map of gallery j (``Match.map``) and the map of the query explaining its similarity to
gallery j (``Match.query_map``), each as its own strip under the images (ES-Net Fig. 5, docs/methods.md §1.2).

Borders: green for a true match (same identity, other camera), red for a false match, grey for junk (same identity
and camera: ignored by the Market protocol, drawn dimmed), blue for the query. Unlike the evaluator, the grid keeps
junk images in place so what the model ranked high is visible. Slate grey ("neutral") marks a match whose identity
is unknown (images outside a labelled dataset, or a query from outside it).
"""

from __future__ import annotations

import html
import io
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from esreid.files import atomic_write
from esreid.viz.images import ImageLike, MapLike, as_rgb, overlay

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "query": (37, 99, 235),
    "match": (22, 163, 74),
    "false": (220, 38, 38),
    "junk": (150, 150, 150),
    "neutral": (100, 116, 139),
}
LEGEND = {"match": "true match", "false": "false match", "junk": "junk (same identity and camera)",
          "neutral": "identity unknown"}
BACKGROUND = (255, 255, 255)
TEXT = (25, 25, 25)
JUNK_DIM = 0.45  # a junk image keeps this weight, the rest is white
STRIP_LABELS = {"gallery_map": "gallery\nCG-RAM", "query_map": "query\nCG-RAM"}


@dataclass
class Match:
    """One ranked gallery image: ``score`` as printed (similarity or distance), ``label`` match | false | junk |
    neutral, optional CG-RAM maps ``(h, w)``: ``map`` of this gallery image and ``query_map`` of the query, both for
    this pair; ``caption`` (e.g. ``"id 12 cam 3"``) printed under the image."""

    image: ImageLike
    score: float
    label: str
    map: Optional[MapLike] = None
    query_map: Optional[MapLike] = None
    caption: str = ""

    def __post_init__(self):
        if self.label not in LEGEND:
            raise ValueError(f"Match.label must be one of {sorted(LEGEND)}, got {self.label!r}")


@dataclass
class RankRow:
    """A query and its ranked matches (best first). ``title``: e.g. the model name; ``score_name``: what the score
    is, shown in the row title."""

    query: ImageLike
    matches: Sequence[Match]
    title: str = ""
    query_caption: str = ""
    score_name: str = "similarity"


@dataclass
class Tile:
    """Where a tile was drawn: ``box`` = (x0, y0, x1, y1) of the tile including its border, in pixels; ``column`` 0 is
    the query, j >= 1 the rank-j image; ``strip``: image | gallery_map | query_map; ``label``: query | match | ..."""

    row: int
    column: int
    strip: str
    box: Tuple[int, int, int, int]
    label: str


@dataclass
class RankGrid:
    image: Any  # PIL.Image.Image, RGB
    tiles: List[Tile] = field(default_factory=list)

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        return buf.getvalue()


def top_k(scores, k: int = 10, largest: bool = True) -> np.ndarray:
    """Indices of the ``k`` best of ``scores`` (N,): highest first for similarities (``largest``), lowest first for
    distances; ties keep gallery order (as the evaluator breaks them)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return np.argsort(-s if largest else s, kind="stable")[:k]


def match_labels(q_pid: int, q_camid: int, g_pids, g_camids) -> List[str]:
    """Market protocol labels of gallery images for one query: ``junk`` (same identity and camera), ``match`` (same
    identity, other camera) or ``false``."""
    pids, cams = np.asarray(g_pids).reshape(-1), np.asarray(g_camids).reshape(-1)
    same = pids == q_pid
    return ["junk" if s and c == q_camid else "match" if s else "false" for s, c in zip(same, cams)]


def _font(size: int):
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


class _Layout:
    """Pixel sizes derived from the tile height (the image area, borders excluded)."""

    def __init__(self, tile_h: int, tile_w: int, border: int):
        self.th, self.tw, self.b = tile_h, tile_w, border
        self.pad = max(6, tile_w // 8)  # between columns
        self.gap = 3 * self.pad  # after the query column
        self.font_size = int(np.clip(round(tile_h / 10), 11, 18))
        self.line = self.font_size + 6
        self.cell_w, self.cell_h = tile_w + 2 * border, tile_h + 2 * border
        self.margin = 2 * self.pad

    def column_x(self, column: int) -> int:
        x = self.margin + column * (self.cell_w + self.pad)
        return x + (self.gap if column else 0)


def _row_title(row: RankRow) -> str:
    head = f"top-{len(row.matches)} by {row.score_name}"
    return f"{row.title}: {head}" if row.title else head


def wrap(text: str, font, width: float) -> List[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels in ``font`` (a word longer than that keeps
    a line of its own; a no-break space ``\\u00a0`` joins words); ``[]`` for empty text."""
    lines: List[str] = []
    for word in filter(None, text.split(" ")):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def _tile_rgb(image: ImageLike, layout: _Layout) -> np.ndarray:
    from PIL import Image

    rgb = as_rgb(image)
    if rgb.shape[:2] != (layout.th, layout.tw):
        rgb = np.asarray(Image.fromarray(rgb).resize((layout.tw, layout.th), Image.Resampling.BICUBIC))
    return rgb


def draw_rank_grid(rows: Sequence[RankRow], tile_height: int = 128, border: int = 4) -> RankGrid:
    """Draw ``rows`` one under another (a model comparison: one row per model for the same query).

    Every image is resized to ``tile_height`` pixels high and the first query's aspect ratio. Per row: a title line
    (``title``, k and the score name), rank numbers, the images with coloured borders, the scores and captions, then a
    ``gallery CG-RAM`` strip when any match has ``map`` and a ``query CG-RAM`` strip when any has ``query_map``.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("draw_rank_grid needs at least one RankRow")
    h0, w0 = as_rgb(rows[0].query).shape[:2]
    L = _Layout(tile_height, max(8, round(tile_height * w0 / h0)), border)
    font, bold = _font(L.font_size), _font(L.font_size + 2)
    strips_of = [["image"] + [s for s, key in (("gallery_map", "map"), ("query_map", "query_map"))
                              if any(getattr(m, key) is not None for m in r.matches)] for r in rows]
    fit = L.cell_w + L.pad - 2  # a caption may use its column and the gap to the next
    captions = [[wrap(c, font, fit) for c in [r.query_caption] + [m.caption for m in r.matches]] for r in rows]
    # a row whose captions do not all fit on one line gets every caption broken at each space (aligned lines)
    captions = [[list(filter(None, c.split(" "))) for c in [r.query_caption] + [m.caption for m in r.matches]]
                if max(map(len, caps)) > 1 else caps for r, caps in zip(rows, captions)]
    caption_lines = [max(map(len, c)) for c in captions]
    row_h = [2 * L.line + L.cell_h + L.line * (1 + cap) + (len(s) - 1) * (L.cell_h + L.pad)
             for s, cap in zip(strips_of, caption_lines)]
    used = sorted({m.label for r in rows for m in r.matches}, key=list(LEGEND).index)
    legend_w = sum(L.font_size + 6 + font.getlength(LEGEND[label]) + 3 * L.pad for label in used)
    titles_w = max(bold.getlength(_row_title(r)) for r in rows)
    width = L.column_x(max(len(r.matches) for r in rows) + 1) - L.pad + L.margin
    width = int(max(width, 2 * L.margin + legend_w, 2 * L.margin + titles_w))
    height = 2 * L.margin + sum(row_h) + L.pad * (len(rows) - 1) + (2 * L.line if used else 0)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    tiles: List[Tile] = []

    def centred(text: str, x_mid: float, y: int, f=font) -> None:
        draw.text((x_mid, y), text, fill=TEXT, font=f, anchor="ma", align="center")

    def paste(rgb: np.ndarray, column: int, y: int, label: str, row: int, strip: str) -> None:
        x = L.column_x(column)
        draw.rectangle((x, y, x + L.cell_w - 1, y + L.cell_h - 1), fill=COLOURS[label])
        if label == "junk":
            rgb = np.round(JUNK_DIM * rgb + (1 - JUNK_DIM) * 255).astype(np.uint8)
        canvas.paste(Image.fromarray(rgb), (x + L.b, y + L.b))
        tiles.append(Tile(row, column, strip, (x, y, x + L.cell_w, y + L.cell_h), label))

    y = L.margin
    for i, row in enumerate(rows):
        if i:
            draw.line((L.margin, y - L.pad // 2 - 1, width - L.margin, y - L.pad // 2 - 1), fill=(200, 200, 200))
        k = len(row.matches)
        draw.text((L.margin, y), _row_title(row), fill=TEXT, font=bold)
        y += 2 * L.line
        q, gs = _tile_rgb(row.query, L), [_tile_rgb(m.image, L) for m in row.matches]
        mid = [L.column_x(c) + L.cell_w / 2 for c in range(k + 1)]
        centred("query", mid[0], y - L.line)
        paste(q, 0, y, "query", i, "image")
        for j, m in enumerate(row.matches, 1):
            centred(f"#{j}", mid[j], y - L.line)
            paste(gs[j - 1], j, y, m.label, i, "image")
            centred(f"{m.score:.3f}", mid[j], y + L.cell_h + 2)
        y += L.cell_h + L.line
        for j, lines in enumerate(captions[i]):
            for n, line in enumerate(lines):
                centred(line, mid[j], y + 2 + n * L.line)
        y += L.line * caption_lines[i]
        for strip in strips_of[i][1:]:
            y += L.pad
            centred(STRIP_LABELS[strip], mid[0], y + L.cell_h // 2 - L.line)
            for j, m in enumerate(row.matches, 1):
                rgb, pmap = (gs[j - 1], m.map) if strip == "gallery_map" else (q, m.query_map)
                if pmap is not None:
                    paste(overlay(rgb, pmap), j, y, m.label, i, strip)
            y += L.cell_h
        y += L.pad
    if used:
        x, y = L.margin, height - L.margin - L.line
        for label in used:
            draw.rectangle((x, y + 2, x + L.font_size, y + 2 + L.font_size), fill=COLOURS[label])
            x += L.font_size + 6
            draw.text((x, y), LEGEND[label], fill=TEXT, font=font)
            x += int(font.getlength(LEGEND[label])) + 3 * L.pad
    return RankGrid(canvas, tiles)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "query"


def write_rank_pages(out_dir: str, pages: Mapping[str, Sequence[RankRow]], title: str = "ranked lists",
                     tile_height: int = 128) -> str:
    """One PNG per query (``pages``: query name -> its rows, e.g. one per model) plus ``index.html`` listing them,
    all in ``out_dir``, each written atomically. Returns the path of ``index.html``."""
    entries = []
    for name, rows in pages.items():
        file = f"{len(entries):03d}_{_file_name(name)}.png"  # numbered: two names never share a file
        atomic_write(os.path.join(out_dir, file), draw_rank_grid(rows, tile_height).png())
        entries.append(f'<figure><figcaption>{html.escape(name)}</figcaption><img src="{html.escape(file)}" '
                       f'alt="{html.escape(name)}"></figure>')
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}figure{margin:0 0 2em}img{max-width:100%}"
            "figcaption{font-weight:bold;margin-bottom:.3em}</style></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n" + "\n".join(entries) + "\n</body></html>\n")
    return atomic_write(os.path.join(out_dir, "index.html"), page)
