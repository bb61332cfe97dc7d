"""Custom datasets: a folder per identity (with or without camera sub-folders) and CSV files."""

import os

import pytest

from esreid.data.base import DatasetError, build_dataset


def rel(items, root):
    return [(os.path.relpath(it.path, root), it.pid, it.camid) for it in items]


def test_custom_folders_named_ids_and_cameras(tmp_path, layouts):
    root = str(tmp_path)
    layouts.write_files(os.path.join(root, "train", "alice", "front"), ["a.jpg", "b.png"])
    layouts.write_files(os.path.join(root, "train", "bob"), ["c.jpeg", "Thumbs.db"])
    layouts.write_files(os.path.join(root, "query", "carol", "side"), ["d.jpg"])
    layouts.write_files(os.path.join(root, "gallery", "carol", "front"), ["e.jpg"])
    layouts.write_files(os.path.join(root, "gallery", "dave"), ["f.jpg"])
    ds = build_dataset("custom", root, verbose=False)
    assert rel(ds.train, root) == [("train/alice/front/a.jpg", 0, 0), ("train/alice/front/b.png", 0, 0),
                                   ("train/bob/c.jpeg", 1, 0)]
    # identities across splits sorted: alice 0, bob 1, carol 2, dave 3; cameras: front 0, side 1
    assert rel(ds.query, root) == [("query/carol/side/d.jpg", 2, 1)]
    assert rel(ds.gallery, root) == [("gallery/carol/front/e.jpg", 2, 0), ("gallery/dave/f.jpg", 3, 1)]
    assert ds.ignored_files == 1


def test_custom_folders_numeric_ids_keep_their_numbers(tmp_path, layouts):
    root = str(tmp_path)
    for split, ident in [("train", "17"), ("train", "5"), ("query", "42"), ("gallery", "42")]:
        layouts.write_files(os.path.join(root, split, ident), ["x.jpg"])
    ds = build_dataset("custom", root, verbose=False)
    assert [it.pid for it in ds.train] == [1, 0]  # folders "17", "5"; numeric relabelling: 5 -> 0, 17 -> 1
    assert [(it.pid, it.camid) for it in ds.query + ds.gallery] == [(42, 0), (42, 1)]


def test_custom_csv(tmp_path, layouts):
    root = str(tmp_path)
    for name in ["img/a.jpg", "img/b.jpg", "img/c.jpg"]:
        layouts.write_image(os.path.join(root, name))
    rows = {"train": ["img/a.jpg,3,0", "img/b.jpg,8,1"], "query": ["img/c.jpg,5,0"], "gallery": ["img/a.jpg,5,2"]}
    for split, lines in rows.items():
        with open(os.path.join(root, f"{split}.csv"), "w") as f:
            f.write("path,pid,camid\n" + "\n".join(lines) + "\n")
    ds = build_dataset("custom", root, verbose=False)
    assert rel(ds.train, root) == [("img/a.jpg", 0, 0), ("img/b.jpg", 1, 1)]
    assert rel(ds.query, root) == [("img/c.jpg", 5, 0)] and rel(ds.gallery, root) == [("img/a.jpg", 5, 2)]
    with open(os.path.join(root, "query.csv"), "w") as f:
        f.write("path,pid,camid\nimg/c.jpg,five,0\n")
    with pytest.raises(DatasetError, match=r"query.csv line 2: expected '<path>,<integer pid>,<integer camid>'"):
        build_dataset("custom", root, verbose=False)
    with open(os.path.join(root, "query.csv"), "w") as f:
        f.write("img/c.jpg,5,0\n")
    with pytest.raises(DatasetError, match="query.csv: expected the header 'path,pid,camid'"):
        build_dataset("custom", root, verbose=False)
    with open(os.path.join(root, "query.csv"), "w") as f:
        f.write("path,pid,camid\nimg/zz.jpg,5,0\n")
    with pytest.raises(DatasetError, match=r"line 2: the image .*img/zz.jpg does not exist"):
        build_dataset("custom", root, verbose=False)


def test_custom_errors(tmp_path, layouts):
    root = str(tmp_path)
    with pytest.raises(DatasetError, match="root .*nope does not exist"):
        build_dataset("custom", os.path.join(root, "nope"))
    layouts.write_files(os.path.join(root, "train", "1"), ["a.jpg"])
    layouts.write_files(os.path.join(root, "query", "1"), ["a.jpg"])
    with pytest.raises(DatasetError, match=f"expected {root}/gallery/ .* or {root}/gallery.csv, found neither"):
        build_dataset("custom", root)
    layouts.write_files(os.path.join(root, "gallery", "1"), ["notes.txt"])
    with pytest.raises(DatasetError, match="gallery split is empty"):
        build_dataset("custom", root)


@pytest.mark.parametrize("where", ["identity", "camera"])
def test_a_fifo_named_jpg_is_refused_by_the_scan(tmp_path, layouts, where):
    """Today's scan accepts it by its name and the first epoch then waits forever in open(); the scan names it."""
    root = str(tmp_path)
    for split in ("train", "query", "gallery"):
        layouts.write_files(os.path.join(root, split, "7"), ["a.jpg"])
    folder = os.path.join(root, "gallery", "7") if where == "identity" else os.path.join(root, "gallery", "7", "c1")
    os.makedirs(folder, exist_ok=True)
    os.mkfifo(os.path.join(folder, "pipe.jpg"))
    with pytest.raises(DatasetError, match=rf"^{folder}/pipe.jpg: not a regular file \(a FIFO / named pipe\)"):
        build_dataset("custom", root, verbose=False)


def test_a_fifo_in_a_market_folder_is_named(tmp_path, layouts):
    """list_images (Market, Duke, VeRi, synthetic) skipped it silently; a special file under an image name is named."""
    layouts.make_market(str(tmp_path))
    query = os.path.join(str(tmp_path), "market1501", "Market-1501-v15.09.15", "query")
    os.mkfifo(os.path.join(query, "0001_c1s1_000001_00.jpg"))
    with pytest.raises(DatasetError, match=r"0001_c1s1_000001_00.jpg: not a regular file \(a FIFO / named pipe\)"):
        build_dataset("market1501", str(tmp_path), verbose=False)
