"""Rank grids: labels and top-k against hand-worked examples, border colours and overlays at known pixels, layouts."""

import html.parser
import io

import numpy as np
import pytest
import torch
from PIL import Image

from esreid.viz.ranklist import JUNK_DIM, Match, RankRow, draw_rank_grid, match_labels, top_k, write_rank_pages

H, W = 32, 16  # image size; tiles are drawn at tile_height=64 (x2)


def solid(rgb, h=H, w=W):
    """A uint8 (3, H, W) tensor of one colour, the loaders' layout."""
    return torch.tensor(rgb, dtype=torch.uint8)[:, None, None].expand(3, h, w).clone()


def test_match_labels_follow_the_market_protocol():
    # query id 7 seen by camera 2: same id other camera = match, same id same camera = junk, other id = false
    assert match_labels(7, 2, [7, 7, 3, 7, 3], [1, 2, 2, 5, 0]) == ["match", "junk", "false", "match", "false"]


def test_top_k_orders_similarities_and_distances_and_keeps_gallery_order_on_ties():
    s = [0.2, 0.9, 0.5, 0.9, 0.1]
    assert top_k(s, 3).tolist() == [1, 3, 2]
    assert top_k(s, 3, largest=False).tolist() == [4, 0, 2]
    assert top_k(s, 10).tolist() == [1, 3, 2, 0, 4]


def hue(rgb):
    """The dominant channel of a colour, or 'grey'."""
    r, g, b = (int(c) for c in rgb)
    if max(r, g, b) - min(r, g, b) < 10:
        return "grey"
    return "rgb"[int(np.argmax([r, g, b]))]


def test_borders_are_green_red_grey_and_the_query_blue():
    colours = {"match": (200, 200, 40), "false": (40, 200, 200), "junk": (200, 40, 200)}
    row = RankRow(solid((250, 250, 250)), [Match(solid(colours[lab]), s, lab)
                                           for lab, s in (("match", 0.9), ("false", 0.8), ("junk", 0.7))])
    grid = draw_rank_grid([row], tile_height=2 * H, border=4)
    img = np.asarray(grid.image)
    assert [(t.column, t.label) for t in grid.tiles] == [(0, "query"), (1, "match"), (2, "false"), (3, "junk")]
    want_hue = {"query": "b", "match": "g", "false": "r", "junk": "grey"}
    xs = []
    for t in grid.tiles:
        x0, y0, x1, y1 = t.box
        assert (x1 - x0, y1 - y0) == (W * 2 + 8, H * 2 + 8)  # image at 2x plus a 4-pixel border each side
        for x, y in ((x0 + 1, y0 + 1), (x1 - 2, (y0 + y1) // 2), ((x0 + x1) // 2, y1 - 2)):  # corner, right, bottom
            assert hue(img[y, x]) == want_hue[t.label], (t.label, img[y, x])
        inside = img[(y0 + y1) // 2, (x0 + x1) // 2]
        if t.label in colours:
            want = np.array(colours[t.label], dtype=float)
            if t.label == "junk":  # dimmed towards white
                want = JUNK_DIM * want + (1 - JUNK_DIM) * 255
            assert np.abs(inside - want).max() <= 1, (t.label, inside, want)
        xs.append(x0)
    assert xs == sorted(xs) and len({t.box[1] for t in grid.tiles}) == 1  # one row, left to right


def test_map_strips_show_each_pairs_maps_in_place():
    """Gallery j's map goes on gallery j, the query's map for pair j on the query; a map hot at its top-right corner
    is hot (red) at the tile's top-right and cold (blue) at its bottom-left: not transposed or flipped."""
    m = torch.zeros(4, 2)
    m[0, 1] = 1.0
    q, g = solid((128, 128, 128)), solid((128, 128, 128))
    row = RankRow(q, [Match(g, 0.9, "match", map=m, query_map=m), Match(g, 0.8, "false", map=m),
                      Match(g, 0.7, "false")])
    grid = draw_rank_grid([row], tile_height=2 * H)
    img = np.asarray(grid.image).astype(int)
    strips = {(t.strip, t.column) for t in grid.tiles}
    assert strips == {("image", 0), ("image", 1), ("image", 2), ("image", 3),
                      ("gallery_map", 1), ("gallery_map", 2), ("query_map", 1)}
    for t in grid.tiles:
        x0, y0, x1, y1 = t.box
        top_right, bottom_left = img[y0 + 6, x1 - 7], img[y1 - 7, x0 + 6]
        if t.strip == "image":
            assert np.abs(top_right - 128).max() <= 1
        else:
            assert top_right[0] > top_right[2] + 40 and bottom_left[2] > bottom_left[0] + 40, (t, top_right)
    rows_y = sorted({t.box[1] for t in grid.tiles})
    assert [t.strip for t in sorted(grid.tiles, key=lambda t: t.box[1]) if t.column == 1] == [
        "image", "gallery_map", "query_map"] and len(rows_y) == 3


def test_inputs_as_tensor_array_or_file_draw_the_same(tmp_path):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    path = tmp_path / "g.png"
    Image.fromarray(hwc).save(path)
    grids = [draw_rank_grid([RankRow(x, [Match(x, 0.5, "match")])], tile_height=H)
             for x in (torch.from_numpy(hwc).permute(2, 0, 1), hwc, str(path))]
    ref = np.asarray(grids[0].image)
    assert all(np.array_equal(np.asarray(g.image), ref) for g in grids[1:])
    with pytest.raises(ValueError, match="label"):
        Match(hwc, 0.5, "true")
    with pytest.raises(ValueError, match="uint8"):
        draw_rank_grid([RankRow(hwc.astype(np.float32), [])])


def test_comparison_layout_stacks_one_block_per_model():
    q = solid((90, 90, 90))
    a = RankRow(q, [Match(solid((10, 200, 10)), 0.9, "match")] * 3, title="model A")
    b = RankRow(q, [Match(solid((200, 10, 10)), 0.8, "false")] * 5, title="model B")
    grid = draw_rank_grid([a, b], tile_height=2 * H)
    rows = [[t for t in grid.tiles if t.row == r] for r in (0, 1)]
    assert [len(r) for r in rows] == [4, 6]
    assert min(t.box[1] for t in rows[1]) > max(t.box[3] for t in rows[0])  # B entirely below A
    assert max(t.box[2] for t in grid.tiles) < grid.image.width
    assert [t.box[0] for t in rows[0]] == [t.box[0] for t in rows[1][:4]]  # same columns
    with Image.open(io.BytesIO(grid.png())) as img:
        assert img.format == "PNG" and img.size == grid.image.size


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.src = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.src.append(dict(attrs)["src"])


def test_write_rank_pages_writes_one_png_per_query_and_an_index(tmp_path):
    row = RankRow(solid((0, 0, 255)), [Match(solid((0, 255, 0)), 0.5, "match")])
    index = write_rank_pages(str(tmp_path / "ranks"), {"q/1 <id 3>": [row], "q 1 <id 3>": [row, row]},
                             tile_height=H)
    parser = _Images()
    with open(index, encoding="utf-8") as f:
        text = f.read()
    parser.feed(text)
    assert len(parser.src) == 2 and len(set(parser.src)) == 2  # names that sanitise alike get their own files
    assert "&lt;id 3&gt;" in text and "<id 3>" not in text
    heights = []
    for src in parser.src:
        assert "/" not in src
        with Image.open(tmp_path / "ranks" / src) as img:
            heights.append(img.height)
    assert heights[1] > heights[0]  # the second page has two rows


def test_captions_wrap_at_spaces_and_keep_no_break_spaces():
    from esreid.viz.ranklist import _font, wrap

    font = _font(13)
    text = "id\u00a01450 cam\u00a04"
    assert wrap(text, font, 1000) == [text]
    assert wrap(text, font, font.getlength("id\u00a01450") + 1) == ["id\u00a01450", "cam\u00a04"]
    assert wrap(text, font, 5) == ["id\u00a01450", "cam\u00a04"]  # a word wider than the line keeps its own line
    assert wrap("", font, 100) == []
