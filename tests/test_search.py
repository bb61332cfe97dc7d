"""faiss gallery search against exact brute force, and top-k evaluation against the exact evaluator."""

from __future__ import annotations

import csv
import io
import json
import re
import sys

import numpy as np
import pytest
import torch

from esreid.cli import main
from esreid.evaluation.distance import pairwise_distance
from esreid.evaluation.metrics import evaluate_rank
from esreid.evaluation.search import GalleryIndex, SearchError, evaluate_topk, faiss_module, search_files, write_results

pytest.importorskip("faiss")


def clustered(seed, n, ids=20, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim)) * 3
    pids = rng.integers(0, ids, n)
    return (centres[pids] + rng.normal(size=(n, dim))).astype(np.float32), pids, rng.integers(0, 3, n)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_flat_equals_brute_force(metric):
    gf, _, _ = clustered(0, 300)
    qf, _, _ = clustered(1, 17)
    ids = np.arange(300) * 10 + 5
    dist, got = GalleryIndex("flat", metric).add(gf[:100], ids[:100]).add(gf[100:], ids[100:]).search(qf, 7)
    full = pairwise_distance(qf, gf, metric).numpy()
    want = np.argsort(full, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(got, ids[want])
    np.testing.assert_allclose(dist, np.take_along_axis(full, want, 1), atol=1e-4)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_recall(kind):
    gf, _, _ = clustered(2, 4000)
    qf, _, _ = clustered(3, 50)
    _, exact = GalleryIndex("flat").add(gf).search(qf, 10)
    _, approx = GalleryIndex(kind, nprobe=8).add(gf).search(qf, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)])
    assert recall > 0.9


def test_save_load_roundtrip(tmp_path):
    gf, _, _ = clustered(4, 200)
    index = GalleryIndex("hnsw", "euclidean").add(gf, np.arange(200) + 1000)
    index.save(str(tmp_path / "g.npz"))
    loaded = GalleryIndex.load(str(tmp_path / "g.npz"))
    assert (loaded.kind, loaded.metric, len(loaded)) == ("hnsw", "euclidean", 200)
    for a, b in zip(index.search(gf[:5], 4), loaded.search(gf[:5], 4)):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.npz"):
        GalleryIndex.load(str(tmp_path / "bad.npz"))


def test_topk_evaluation_is_exact_for_cmc_and_bounds_map():
    gf, gp, gc = clustered(5, 400)
    qf, qp, qc = clustered(6, 60)
    index = GalleryIndex("flat").add(gf)
    exact = evaluate_rank(qp, gp, qc, gc, distmat=pairwise_distance(qf, gf).double())
    top = evaluate_topk(qp, gp, qc, gc, qf, index, k=10, ranks=(1, 5, 10))
    assert [top["R1"], top["R5"], top["R10"]] == pytest.approx(exact.cmc[[0, 4, 9]].tolist())
    assert top["mAP@10"] <= exact.mAP
    whole = evaluate_topk(qp, gp, qc, gc, qf, index, k=400, ranks=(1,))
    assert whole["mAP@400"] == pytest.approx(exact.mAP, abs=1e-6)
    assert (whole["num_valid_q"], whole["num_skipped_q"]) == (exact.num_valid_q, exact.num_skipped_q)


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"esreid\[faiss\]"):
        faiss_module()


# --- esreid search on files: paths, formats, k capping, ties, every index kind ---------------------------------------
def write_features(path, feats, pids=None, camids=None, paths=None):
    cols = {k: v for k, v in (("ids", pids), ("camids", camids), ("paths", paths)) if v is not None}
    np.savez(path, feats=feats, **cols)
    return str(path)


def tied_gallery(n=40, dim=8, seed=0):
    """Gaussian features with exact duplicates: rows 5, 12, 30 equal row 20 and row 33 equals row 2, so distances tie
    exactly (also across the k-th place); otherwise distances are far apart compared with float32 rounding."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, dim)).astype(np.float32)
    g[[5, 12, 30]] = g[20]
    g[33] = g[2]
    paths = np.array([f"gallery/{i:03d}_c{i % 3}.jpg" for i in range(n)])
    return g, paths


def brute_force(qf, gf, metric):
    """Full ranking per query by float64 distance, ties by gallery index; and the distances."""
    q, g = qf.astype(np.float64), gf.astype(np.float64)
    if metric == "cosine":
        q, g = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
        d = 1.0 - q @ g.T
    else:
        d = (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * q @ g.T
    return np.argsort(d, axis=1, kind="stable"), d


@pytest.fixture
def files(tmp_path):
    gf, paths = tied_gallery()
    rng = np.random.default_rng(1)
    qf = np.concatenate([gf[[20, 2]], rng.normal(size=(3, gf.shape[1])).astype(np.float32)])  # 2 with ties at 0
    qpaths = np.array([f"query/{i}.jpg" for i in range(len(qf))])
    pids, camids = np.arange(len(gf)) // 4, np.arange(len(gf)) % 3
    gallery = write_features(tmp_path / "g.npz", gf, pids, camids, paths)
    query = write_features(tmp_path / "q.npz", qf, np.arange(len(qf)), np.zeros(len(qf), int), qpaths)
    order, dist = brute_force(qf, gf, "cosine")
    return dict(gallery=gallery, query=query, gf=gf, qf=qf, paths=paths, qpaths=qpaths, pids=pids, camids=camids,
                order=order, dist=dist, tmp=tmp_path)


def read_output(path):
    """{query index: [(row, path, distance), ...]} from a .json / .csv / .npz written by esreid search."""
    path = str(path)
    if path.endswith(".json"):
        out = json.loads(open(path).read())["queries"]
        return {q["query"]: [(m["row"], m["path"], m["distance"]) for m in q["matches"]] for q in out}
    if path.endswith(".csv"):
        got = {}
        for row in csv.DictReader(open(path, newline="")):
            got.setdefault(int(row["query"]), []).append((int(row["row"]), row["path"], float(row["distance"])))
        return got
    with np.load(path) as f:
        return {i: list(zip(r.tolist(), p.tolist(), d.tolist())) for i, (r, p, d) in
                enumerate(zip(f["rows"], f["paths"], f["dist"]))}


def expected(files, k):
    return {i: [(int(r), files["paths"][r], files["dist"][i, r]) for r in files["order"][i, :k]]
            for i in range(len(files["qf"]))}


def assert_same_ranking(got, want):
    assert sorted(got) == sorted(want)
    for i in want:
        assert [(r, p) for r, p, _ in got[i]] == [(r, p) for r, p, _ in want[i]], i
        np.testing.assert_allclose([d for *_, d in got[i]], [d for *_, d in want[i]], atol=1e-5)


@pytest.mark.parametrize("ext", [".json", ".csv", ".npz"])
def test_search_output_names_the_brute_force_paths(files, ext, capsys):
    out = files["tmp"] / f"top{ext}"
    assert main(["search", "--gallery", files["gallery"], "--query", files["query"], "-k", "3",
                 "--output", str(out)]) == 0
    assert f"wrote the top-3 matches of 5 queries to {out}" in capsys.readouterr().out
    want = expected(files, 3)
    assert want[0][:3] == [(5, files["paths"][5], want[0][0][2]), (12, files["paths"][12], want[0][1][2]),
                           (20, files["paths"][20], want[0][2][2])]  # 4 tied rows at distance 0: the lowest 3 kept
    assert_same_ranking(read_output(out), want)


def test_search_json_and_npz_carry_every_column(files):
    out = files["tmp"] / "top.json"
    results = search_files(files["query"], 2, gallery=files["gallery"])
    write_results(results, str(out))
    q1 = json.loads(out.read_text())["queries"][1]
    row = int(files["order"][1, 0])  # query 1 is gallery row 2 (tied with row 33)
    assert row == 2
    assert q1 == results[1]
    assert {k: q1[k] for k in ("query", "path", "pid", "camid")} == {"query": 1, "path": "query/1.jpg", "pid": 1,
                                                                    "camid": 0}
    assert q1["matches"][0] == {"rank": 1, "row": 2, "path": files["paths"][2], "pid": int(files["pids"][2]),
                                "camid": int(files["camids"][2]), "distance": pytest.approx(0.0, abs=1e-6)}
    write_results(results, str(files["tmp"] / "top.npz"))
    with np.load(files["tmp"] / "top.npz") as f:
        assert set(f.files) == {"dist", "rows", "paths", "ids", "camids", "query_paths", "query_ids", "query_camids"}
        np.testing.assert_array_equal(f["ids"], files["pids"][f["rows"]])
        np.testing.assert_array_equal(f["camids"], files["camids"][f["rows"]])
        np.testing.assert_array_equal(f["query_paths"], files["qpaths"])


def test_search_prints_query_and_gallery_paths(files, capsys):
    assert main(["search", "--gallery", files["gallery"], "--query", files["query"], "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query 0: query/0.jpg (pid 0, camid 0)"
    assert lines[1] == f"    1  0.0000  {files['paths'][5]}  (row 5, pid 1, camid 2)"
    assert lines[2] == f"    2  0.0000  {files['paths'][12]}  (row 12, pid 3, camid 0)"
    r = int(files["order"][4, 0])
    assert lines[-3] == "query 4: query/4.jpg (pid 4, camid 0)"
    assert lines[-2].split()[:3] == ["1", f"{files['dist'][4, r]:.4f}", files["paths"][r]]
    # a gallery without paths or labels: rows name the matches
    bare = write_features(files["tmp"] / "bare.npz", files["gf"])
    assert main(["search", "--gallery", bare, "--query", files["query"], "-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "    1  0.0000  row 5"


def test_k_is_capped_at_the_gallery_size(files, capsys):
    out = files["tmp"] / "all.json"
    assert main(["search", "--gallery", files["gallery"], "--query", files["query"], "-k", "1000",
                 "--output", str(out)]) == 0
    assert "esreid: note: k=1000 is more than the 40 gallery items: returning all 40" in capsys.readouterr().err
    got = read_output(out)
    assert all(len(m) == 40 for m in got.values())  # no padding rows
    assert_same_ranking(got, expected(files, 40))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_every_index_kind_names_paths_of_its_rows(files, kind, capsys):
    """ivf and hnsw are approximate in general; on 40 items (ivf: one cell, hnsw: ef_search 64) they find all, so
    the CLI must give the exact ranking through every kind, and a saved index must give the same."""
    out, saved = files["tmp"] / f"{kind}.csv", files["tmp"] / f"{kind}_index.npz"
    assert main(["search", "--gallery", files["gallery"], "--query", files["query"], "-k", "50", "--index", kind,
                 "--save-index", str(saved), "--output", str(out)]) == 0
    want = expected(files, 40)
    assert_same_ranking(read_output(out), want)
    reloaded = files["tmp"] / f"{kind}_reloaded.csv"
    assert main(["search", "--load-index", str(saved), "--query", files["query"], "-k", "50",
                 "--output", str(reloaded)]) == 0
    assert reloaded.read_text() == out.read_text()
    assert f"wrote the {kind} index of 40 gallery items to {saved}" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_large_index_with_many_ties(kind, capsys, tmp_path):
    """3000 x 16 small-integer features, euclidean: every squared distance is an exact integer in float32 and in
    float64, so the brute-force ranking (ties by index) is exact; there are many ties, also at the k-th place.
    25 queries take faiss's BLAS path. flat must match the brute force; ivf / hnsw must return rows whose paths,
    distances and order (by distance, ties by row) are right, padded at the end when they find fewer."""
    rng = np.random.default_rng(3)
    gf = rng.integers(-3, 4, size=(3000, 16)).astype(np.float32)
    qf = rng.integers(-3, 4, size=(25, 16)).astype(np.float32)
    paths = np.array([f"g/{i}.jpg" for i in range(len(gf))])
    gallery = write_features(tmp_path / "g.npz", gf, paths=paths)
    query = write_features(tmp_path / "q.npz", qf)
    order, dist = brute_force(qf, gf, "euclidean")
    k = 20
    assert (dist[np.arange(25), order[:, k - 1]] == dist[np.arange(25), order[:, k]]).any()  # ties across place k
    results = search_files(query, k, gallery=gallery, kind=kind, metric="euclidean", nprobe=4)
    assert results.rows.shape == (25, k)
    if kind == "flat":
        np.testing.assert_array_equal(results.rows, order[:, :k])
    for i, q in enumerate(results):
        rows = [m["row"] for m in q["matches"]]
        assert [m["path"] for m in q["matches"]] == paths[rows].tolist()
        np.testing.assert_allclose([m["distance"] for m in q["matches"]], dist[i, rows], atol=1e-3)
        assert sorted(zip(dist[i, rows], rows)) == list(zip(dist[i, rows], rows))
    whole = search_files(query, 5000, gallery=gallery, kind=kind, metric="euclidean", nprobe=4)
    assert whole.rows.shape == (25, 3000)
    err = capsys.readouterr().err
    assert "k=5000 is more than the 3000 gallery items" in err
    if kind == "flat":
        np.testing.assert_array_equal(whole.rows, order)
    elif kind == "ivf":  # 4 of 54 cells probed: fewer than 3000 found, said on stderr, padded with -1 at the end
        assert "the approximate ivf index found fewer than 3000 matches for 25 of 25 queries" in err
        found = whole.rows >= 0
        assert (np.sort(~found, axis=1) == ~found).all() and np.isinf(whole.dist[~found]).all()
        assert len(whole[0]["matches"]) == found[0].sum()


def as_layouts(x):
    """The same features in layouts and dtypes faiss cannot take as they are."""
    rev = np.ascontiguousarray(x[::-1])[::-1]  # negative strides
    return {"float64": x.astype(np.float64), "float16": x.astype(np.float16), "transposed": np.asfortranarray(x),
            "column slice": np.repeat(x, 2, axis=1)[:, ::2], "reversed": rev, "big endian": x.astype(">f4"),
            "torch transposed": torch.from_numpy(x.T.copy()).T,
            "torch bfloat16": torch.from_numpy(x).to(torch.bfloat16), "list": x.tolist()}


ROUNDING = {"float16": lambda x: x.astype(np.float16).astype(np.float32),
            "torch bfloat16": lambda x: torch.from_numpy(x).to(torch.bfloat16).float().numpy()}


@pytest.mark.parametrize("layout", ["float64", "float16", "transposed", "column slice", "reversed", "big endian",
                                    "torch transposed", "torch bfloat16", "list"])
def test_index_accepts_any_strides_and_float_dtypes(layout):
    gf, _ = tied_gallery()
    qf = gf[[3, 20, 7]] + 0.01
    gf, qf = (ROUNDING.get(layout, lambda x: x)(x) for x in (gf, qf))  # the reference sees the rounded values
    order, dist = brute_force(qf, gf, "cosine")
    g, q = as_layouts(gf)[layout], as_layouts(qf)[layout]
    got_dist, rows = GalleryIndex("flat").add(g).search_rows(q, 5)
    np.testing.assert_array_equal(rows, order[:, :5])
    np.testing.assert_allclose(got_dist, np.take_along_axis(dist, order[:, :5], 1), atol=1e-5)


def test_index_rejects_unusable_features():
    gf, _ = tied_gallery()
    with pytest.raises(SearchError, match="expected floating-point features, got dtype int64"):
        GalleryIndex().add(gf.astype(np.int64))
    bad = gf.copy()
    bad[[7, 9], 1] = np.nan
    with pytest.raises(SearchError, match=r"2 rows hold NaN or inf \(first: row 7\)"):
        GalleryIndex().add(bad)
    with pytest.raises(SearchError, match="dimension 4 does not match the index"):
        GalleryIndex().add(gf).search(gf[:, :4], 1)


def run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_search_user_errors_are_one_line_exit_2(files, capsys):
    g, q, tmp = files["gallery"], files["query"], files["tmp"]
    short = write_features(tmp / "short.npz", files["qf"][:, :4])
    noindex = tmp / "never.npz"
    cases = [
        (["--gallery", str(tmp / "nope.npz"), "--query", q], "argument --gallery: file not found"),
        (["--gallery", g, "--query", short], f"{short}: features of dimension 4, but the gallery's ({g}) have 8"),
        (["--gallery", g, "--query", q, "--output", str(tmp / "top.txt"), "--save-index", str(noindex)],
         "expected a file name ending in .csv, .json, .npz"),
        (["--gallery", g, "--query", q, "--index", "lsh"], "index kind: expected one of flat, hnsw, ivf, got 'lsh'"),
        (["--load-index", g, "--query", q], f"{g}: not a saved gallery index"),
        (["--gallery", g, "--query", q, "-k", "0"], "argument -k: expected a positive integer, got '0'"),
    ]
    np.savez(tmp / "nofeats.npz", x=files["gf"])
    cases.append((["--gallery", str(tmp / "nofeats.npz"), "--query", q], "expected an array 'feats' (N, D)"))
    for argv, message in cases:
        code, err = run(["search", *argv], capsys)
        assert code == 2, argv
        assert err.startswith("esreid: error: ") and err.count("\n") == 1 and message in err, (argv, err)
    assert not noindex.exists()  # the wrong --output extension stopped the command before any work


def test_loaded_index_keeps_its_kind(files, capsys):
    saved = files["tmp"] / "i.npz"
    assert main(["search", "--gallery", files["gallery"], "--query", files["query"], "--index", "hnsw",
                 "--save-index", str(saved)]) == 0
    code, err = run(["search", "--load-index", str(saved), "--query", files["query"], "--index", "flat"], capsys)
    assert code == 2 and "the saved index has index 'hnsw'; --index flat describes a new index" in err
    code, err = run(["search", "--gallery", str(saved), "--query", files["query"]], capsys)
    assert code == 2 and "a saved index goes to --load-index" in err


# --- untrusted files (issue 21) ---------------------------------------------------------------------------------
def forged_npz(path, name, header_shape, dtype="<f4", payload=b"\0" * 64):
    """An .npz whose member ``name`` has a hand-written .npy header claiming ``header_shape``."""
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, dtype))
    header["shape"] = header_shape
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}.npy", buf.getvalue() + payload)
    return str(path)


def test_npz_zip_bomb_is_refused_from_the_zip_directory(files, capsys, monkeypatch):
    """64 MB of zeros deflate to 64 kB; with less memory available than that, the file is refused before a byte is
    inflated (the 7.7 GB bomb is the same file, larger)."""
    import esreid.evaluation.search as search

    bomb = files["tmp"] / "bomb.npz"
    np.savez_compressed(bomb, feats=np.zeros((2_000_000, 8), np.float32))
    assert bomb.stat().st_size < 1_000_000
    monkeypatch.setattr(search, "available_memory", lambda: 10_000_000, raising=False)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load reached"))
    code, err = run(["search", "--gallery", str(bomb), "--query", files["query"]], capsys)
    assert code == 2 and err == (f"esreid: error: {bomb}: its arrays inflate to 64.0 MB (64000128 bytes), more "
                                 "than the 10.0 MB (10000000 bytes) of memory available here (a zip bomb, or features "
                                 "too large for this machine): check where the file comes from, or search on a "
                                 "machine with more memory\n")


def test_npz_forged_shape_is_refused_before_numpy_allocates_it(files, capsys):
    """A header claiming 10^12 floats in a 64-byte member: numpy would allocate 4 TB before reading (today: exit 1)."""
    forged = forged_npz(files["tmp"] / "forged.npz", "feats", (10**12,))
    code, err = run(["search", "--gallery", forged, "--query", files["query"]], capsys)
    assert code == 2 and err == (f"esreid: error: {forged}: array 'feats' claims shape (1000000000000,) (4.0 TB "
                                 "(4000000000000 bytes)) but its member holds 192 bytes: the file is damaged or "
                                 "forged; write it again with esreid extract\n")


def test_object_array_npz_is_one_line(files, capsys):
    objects = files["tmp"] / "objects.npz"
    np.savez(objects, feats=files["qf"], paths=np.array([{"a": 1}] * len(files["qf"]), dtype=object))
    code, err = run(["search", "--gallery", files["gallery"], "--query", str(objects)], capsys)
    assert code == 2 and err == (f"esreid: error: {objects}: array 'paths' holds Python objects (dtype object), which "
                                 "only pickle can load and esreid never unpickles a features file: write it with "
                                 "esreid extract (numbers and strings only)\n")


def saved_index(files, tmp_name="i.npz"):
    saved = files["tmp"] / tmp_name
    assert main(["search", "--gallery", files["gallery"], "--query", files["query"], "--save-index", str(saved)]) == 0
    with np.load(saved) as f:
        return saved, {k: f[k] for k in f.files}


def test_damaged_faiss_index_is_one_line(files, capsys):
    saved, arrays = saved_index(files)
    arrays["index"] = arrays["index"][: len(arrays["index"]) // 2]  # a truncated serialised index
    np.savez(saved, **arrays)
    capsys.readouterr()
    code, err = run(["search", "--load-index", str(saved), "--query", files["query"]], capsys)
    assert code == 2 and re.fullmatch(rf"esreid: error: {re.escape(str(saved))}: the faiss index in it is damaged "
                                      r"\(.+\); build it again with esreid search --gallery FEATS.npz --save-index\n",
                                      err), err


def test_index_inconsistent_with_its_gallery_is_refused_not_capped(files, capsys):
    """More ids and paths than faiss vectors: today k is capped at the vectors silently (and rows past them are never
    returned); the file is refused."""
    saved, arrays = saved_index(files)
    n = len(arrays["ids"])
    arrays["ids"] = np.arange(2 * n)
    arrays["info_path"] = np.concatenate([arrays["info_path"]] * 2)
    np.savez(saved, **arrays)
    capsys.readouterr()
    code, err = run(["search", "--load-index", str(saved), "--query", files["query"], "-k", str(2 * n)], capsys)
    assert code == 2 and err == (f"esreid: error: {saved}: inconsistent saved index: its faiss index holds {n} vectors "
                                 f"but the file has {2 * n} ids, {2 * n} rows of info_path; build it again with esreid "
                                 "search --gallery FEATS.npz --save-index\n")
