"""Market-1501 loader against generated layouts with the real quirks (junk -1, distractors 0, Thumbs.db, nesting)."""

import os

import pytest

from esreid.data.base import DatasetError, build_dataset
from esreid.data.datasets.market1501 import Market1501


def test_market_parses_pids_cams_and_quirks(tmp_path, layouts):
    base = layouts.make_market(str(tmp_path))
    ds = Market1501(str(tmp_path), verbose=False)
    assert ds.data_dir == base
    assert layouts.triples(ds.train, base) == [
        ("bounding_box_train/0002_c1s1_000451_03.jpg", 0, 0),
        ("bounding_box_train/0002_c2s1_000301_01.jpg", 0, 1),
        ("bounding_box_train/0007_c3s3_077419_03.jpg", 1, 2),
        ("bounding_box_train/1500_c6s4_002202_01.jpg", 2, 5),
    ]
    assert layouts.triples(ds.query, base) == [("query/0002_c5s1_000401_01.jpg", 2, 4),
                                               ("query/0007_c6s3_076594_00.jpg", 7, 5)]
    # -1 junk dropped, 0 distractor kept, raw pids in the gallery
    assert sorted((p, c) for _, p, c in layouts.triples(ds.gallery, base)) == [(0, 2), (2, 0), (7, 1)]
    assert ds.ignored_files == 2
    assert all(os.path.isabs(it.path) for it in ds.train + ds.query + ds.gallery)
    assert ds.protocol == "market"
    assert ds.check_counts() != []  # a miniature never matches the published counts
    assert ds.check_counts({"train": (3, 4), "query": (2, 2), "gallery": (3, 3)}) == []
    assert ds.check_counts({"train": (3, 5)}) == ["train: expected 3 ids / 5 images, found 3 / 4"]


@pytest.mark.parametrize("prefix", ["", "market1501", "Market-1501-v15.09.15"])
def test_market_fallback_layouts(tmp_path, prefix, layouts):
    base = layouts.make_market(str(tmp_path), prefix)
    ds = build_dataset("market1501", str(tmp_path), verbose=False)
    assert ds.data_dir == os.path.normpath(base)
    assert (ds.num_train_pids, len(ds.train), len(ds.gallery)) == (3, 4, 3)


def test_market_prints_summary(tmp_path, capsys, layouts):
    layouts.make_market(str(tmp_path))
    Market1501(str(tmp_path))
    out = capsys.readouterr().out
    assert "train    |     3 |        4 |         4" in out
    assert "gallery  |     3 |        3 |         3" in out
    assert "skipped 2 non-image files" in out


def test_market_distractors_500k(tmp_path, layouts):
    base = layouts.make_market(str(tmp_path))
    layouts.write_files(os.path.join(base, "images"), ["0000_c1s1_900001_01.jpg", "0000_c4s1_900002_01.jpg"])
    ds = Market1501(str(tmp_path), distractors_500k=True, verbose=False)
    assert len(ds.gallery) == 5 and "gallery" not in ds.published
    layouts.make_market(str(tmp_path / "other"))
    with pytest.raises(DatasetError, match="expected the folder 'images' in"):
        Market1501(str(tmp_path / "other"), distractors_500k=True, verbose=False)


def test_market_errors(tmp_path, layouts):
    with pytest.raises(DatasetError, match=f"root {tmp_path / 'nope'} does not exist"):
        Market1501(str(tmp_path / "nope"))
    # the zip extracted one level too deep
    layouts.make_market(str(tmp_path), "market1501/Market-1501-v15.09.15/Market-1501-v15.09.15")
    with pytest.raises(DatasetError) as e:
        Market1501(str(tmp_path))
    msg = str(e.value)
    assert f"no 'bounding_box_train' under {tmp_path}" in msg
    assert str(tmp_path / "market1501" / "Market-1501-v15.09.15") in msg
    assert "found market1501/Market-1501-v15.09.15/Market-1501-v15.09.15" in msg and "too deep" in msg


def test_market_partial_empty_and_bad_names(tmp_path, layouts):
    base = layouts.make_market(str(tmp_path))
    os.rename(os.path.join(base, "query"), os.path.join(base, "queries"))
    with pytest.raises(DatasetError, match="missing 'query'"):
        Market1501(str(tmp_path))
    os.rename(os.path.join(base, "queries"), os.path.join(base, "query"))
    for name in os.listdir(os.path.join(base, "query")):
        os.remove(os.path.join(base, "query", name))
    layouts.write_files(os.path.join(base, "query"), ["Thumbs.db"])
    with pytest.raises(DatasetError, match=f"query split is empty: no usable images in {base}/query"):
        Market1501(str(tmp_path))
    layouts.write_files(os.path.join(base, "query"), ["img_0002.jpg"])
    with pytest.raises(DatasetError, match=r"cannot parse the file name .*query/img_0002.jpg: expected '<pid>_c<cam"):
        Market1501(str(tmp_path))
    os.remove(os.path.join(base, "query", "img_0002.jpg"))
    layouts.write_files(os.path.join(base, "query"), ["0002_c7s1_000401_01.jpg"])
    with pytest.raises(DatasetError, match="camera 7 out of range"):
        Market1501(str(tmp_path))
