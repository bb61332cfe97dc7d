"""`esreid search --html / --grid` against brute force: the page links, and the grid draws, each query's gallery images
in the brute-force cosine order with the Market labels (or neutral without pids); only the top-k files are read, so a
large index draws; missing paths or images stop with one line before anything is written."""

from __future__ import annotations

import os
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from esreid.cli import main
from esreid.inference import save_features
from esreid.viz.ranklist import COLOURS, JUNK_DIM

pytest.importorskip("faiss")

K = 4


def colour(i: int):
    """A distinct solid colour per image index (no two within 30 of each other in every channel)."""
    return (40 + (i * 53) % 200, 40 + (i * 97) % 200, 40 + (i * 151) % 200)


def write_images(folder, n, start=0):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = os.path.join(folder, f"img {i:03d}.png")  # a space: links must be URL-quoted
        Image.new("RGB", (8, 16), colour(i)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def files(tmp_path):
    """Gallery (12 images, pids 0..3, cameras 0/1) and 3 queries as esreid extract writes them, and the brute-force
    cosine order."""
    rng = np.random.default_rng(0)
    gf = rng.normal(size=(12, 8)).astype(np.float32)
    qf = (gf[[0, 5, 9]] + 0.3 * rng.normal(size=(3, 8))).astype(np.float32)
    g_pids, g_cams = np.arange(12) % 4, (np.arange(12) // 4) % 2
    q_pids, q_cams = np.array([0, 1, 3]), np.array([0, 1, 0])
    g_paths = write_images(tmp_path / "gallery", 12)
    q_paths = write_images(tmp_path / "query", 3, start=100)
    save_features(str(tmp_path / "g.npz"), gf, g_paths, g_pids, g_cams)
    save_features(str(tmp_path / "q.npz"), qf, q_paths, q_pids, q_cams)
    save_features(str(tmp_path / "g_unlabelled.npz"), gf, g_paths)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    order = np.argsort(1 - unit(qf.astype(np.float64)) @ unit(gf.astype(np.float64)).T, axis=1, kind="stable")
    labels = [["junk" if g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i] else
               "match" if g_pids[j] == q_pids[i] else "false" for j in order[i, :K]] for i in range(3)]
    return tmp_path, order[:, :K], g_paths, q_paths, labels


class Page(HTMLParser):
    """The sections of a search page: per query, [(data-label, img src)] of its figures, the query's first."""

    def __init__(self):
        super().__init__()
        self.sections, self.label = [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append([])
        elif tag == "figure":
            self.label = a["data-label"]
        elif tag == "img" and self.sections:
            self.sections[-1].append((self.label, a["src"]))


def read_page(path):
    page = Page()
    page.feed(open(path, encoding="utf-8").read())
    from urllib.parse import unquote

    folder = os.path.dirname(os.path.abspath(path))
    return [[(label, os.path.normpath(os.path.join(folder, unquote(src)))) for label, src in s] for s in page.sections]


def test_html_links_the_brute_force_top_k_with_labels(files):
    tmp, order, g_paths, q_paths, labels = files
    page = tmp / "pages" / "top.html"  # another folder than the images: links are relative to the page
    assert main(["search", "--gallery", str(tmp / "g.npz"), "--query", str(tmp / "q.npz"), "-k", str(K),
                 "--html", str(page)]) == 0
    sections = read_page(page)
    assert len(sections) == 3
    for i, section in enumerate(sections):
        assert section[0] == ("query", os.path.normpath(q_paths[i]))
        assert [src for _, src in section[1:]] == [os.path.normpath(g_paths[j]) for j in order[i]]
        assert [label for label, _ in section[1:]] == labels[i]
    assert {label for row in labels for label in row} >= {"match", "false"}  # the labels are not all alike


def test_grid_draws_the_brute_force_top_k(files):
    from esreid.evaluation.search import search_files
    from esreid.viz.matches import rank_rows
    from esreid.viz.ranklist import draw_rank_grid

    tmp, order, g_paths, _, labels = files
    out = tmp / "grid"
    assert main(["search", "--gallery", str(tmp / "g.npz"), "--query", str(tmp / "q.npz"), "-k", str(K),
                 "--grid", str(out)]) == 0
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert len(pngs) == 3 and all(p in (out / "index.html").read_text() for p in pngs)
    # where the tiles are (the layout depends on the number of matches and captions, not on which images)
    layouts = [draw_rank_grid(rows).tiles for rows in rank_rows(search_files(str(tmp / "q.npz"), K,
                                                                             gallery=str(tmp / "g.npz"))).values()]
    palette = np.array([colour(j) for j in range(12)], dtype=np.float64)
    for i, png in enumerate(pngs):
        image = np.asarray(Image.open(out / png).convert("RGB")).astype(np.float64)
        matches = sorted((t for t in layouts[i] if t.strip == "image" and t.column > 0), key=lambda t: t.column)
        assert len(matches) == K
        seen = []
        for tile, label in zip(matches, labels[i]):
            x0, y0, x1, y1 = tile.box
            centre, border = image[(y0 + y1) // 2, (x0 + x1) // 2], image[(y0 + y1) // 2, x0 + 1]
            if label == "junk":  # drawn dimmed towards white
                centre = (centre - (1 - JUNK_DIM) * 255) / JUNK_DIM
            seen.append(int(np.argmin(np.abs(palette - centre).max(axis=1))))
            assert np.abs(border - COLOURS[label]).max() <= 1, (i, label, border)
        assert seen == list(order[i])


def test_without_pids_the_borders_are_neutral(files):
    tmp, order, g_paths, _, _ = files
    page = tmp / "n.html"
    assert main(["search", "--gallery", str(tmp / "g_unlabelled.npz"), "--query", str(tmp / "q.npz"), "-k", "2",
                 "--html", str(page)]) == 0
    for i, section in enumerate(read_page(page)):
        assert section[1:] == [("neutral", os.path.normpath(g_paths[j])) for j in order[i, :2]]


def test_a_large_index_reads_only_the_top_k_images(tmp_path):
    # 30,000 gallery items of which only the images that rank in some top-k exist on disk
    from esreid.evaluation.search import GalleryIndex

    rng = np.random.default_rng(1)
    n = 30_000
    gf = rng.normal(size=(n, 16)).astype(np.float32)
    qf = (gf[[7, 12_345, n - 1]] + 0.05 * rng.normal(size=(3, 16))).astype(np.float32)
    paths = np.array([str(tmp_path / "g" / f"{j:05d}.png") for j in range(n)])
    GalleryIndex("flat").add(gf, path=paths).save(str(tmp_path / "index.npz"))
    q_paths = write_images(tmp_path / "q", 3)
    save_features(str(tmp_path / "q.npz"), qf, q_paths)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    order = np.argsort(1 - unit(qf) @ unit(gf).T, axis=1, kind="stable")[:, :3]
    os.makedirs(tmp_path / "g")
    for j in np.unique(order):
        Image.new("RGB", (8, 16), colour(int(j))).save(paths[j])
    page = tmp_path / "top.html"
    assert main(["search", "--load-index", str(tmp_path / "index.npz"), "--query", str(tmp_path / "q.npz"), "-k",
                 "3", "--html", str(page), "--grid", str(tmp_path / "grid")]) == 0
    for i, section in enumerate(read_page(page)):
        assert [src for _, src in section[1:]] == [paths[j] for j in order[i]]
    assert len([p for p in os.listdir(tmp_path / "grid") if p.endswith(".png")]) == 3


def test_pictures_need_paths_and_images(files, capsys):
    tmp, *_ = files
    bare = tmp / "bare.npz"
    np.savez(bare, feats=np.ones((2, 8), np.float32))
    page = tmp / "x.html"
    argv = ["search", "--gallery", str(tmp / "g.npz"), "--query", str(bare), "--html", str(page)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "bare.npz" in err and "no image paths" in err and not page.exists()
    os.remove(tmp / "gallery" / "img 005.png")
    argv = ["search", "--gallery", str(tmp / "g.npz"), "--query", str(tmp / "q.npz"), "-k", "12", "--html",
            str(page)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "img 005.png" in err and "moved" in err and len(err.strip().splitlines()) == 1
    assert not page.exists()
    assert main(argv[:-2] + ["--html", str(tmp / "x.png")]) == 2
    assert "ending in .html" in capsys.readouterr().err
