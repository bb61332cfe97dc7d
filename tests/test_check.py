"""`datasets check`: discovery under a root, summaries, published-count mismatches, layout errors, custom data."""

import os

import pytest

from esreid.data.base import DatasetError
from esreid.data.check import check_main


def test_check_finds_and_summarises(tmp_path, capsys, layouts):
    layouts.make_market(str(tmp_path))
    layouts.make_vehicleid(str(tmp_path), "vehicleid")
    assert check_main(str(tmp_path), verify_counts=False) == 0
    out = capsys.readouterr().out
    assert "--- market1501\n=> market1501 loaded" in out
    assert "  train    |     3 |        4 |         4" in out
    assert all(f"--- vehicleid test_size={n}" in out for n in (800, 1600, 2400))
    assert "dukemtmcreid" not in out and "msmt17" not in out and "MISMATCH" not in out and "custom" not in out

    with pytest.raises(DatasetError, match=r"4 of 4 datasets under .* have problems .*: market1501 \(counts\)"):
        check_main(str(tmp_path), verify_counts=True)
    out = capsys.readouterr().out
    assert "MISMATCH with the published counts: train: expected 751 ids / 12936 images, found 3 / 4" in out


def test_check_reports_broken_layouts_and_empty_roots(tmp_path, capsys, layouts):
    layouts.make_layout(str(tmp_path), "DukeMTMC-reID/DukeMTMC-reID", layouts.DUKE)  # extracted one level too deep
    with pytest.raises(DatasetError, match=r"1 of 1 datasets .*: dukemtmcreid \(cannot be loaded\)"):
        check_main(str(tmp_path), verify_counts=False)
    out = capsys.readouterr().out
    assert "--- dukemtmcreid\n  ERROR: DukeMTMC-reID: no 'bounding_box_train'" in out
    assert "found DukeMTMC-reID/DukeMTMC-reID - the zip was extracted one level too deep" in out
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no known dataset under .*empty.*custom data"):
        check_main(str(tmp_path / "empty"), verify_counts=False)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'} is not a folder"):
        check_main(str(tmp_path / "nope"), False)


def make_custom_folders(root, layouts):
    """Folder layout: 2 train ids (one with camera folders), query/gallery sharing id 'carol'."""
    layouts.write_files(os.path.join(root, "train", "alice", "front"), ["a.jpg", "b.jpg"])
    layouts.write_files(os.path.join(root, "train", "bob"), ["c.jpg"])
    layouts.write_files(os.path.join(root, "query", "carol", "side"), ["d.jpg"])
    layouts.write_files(os.path.join(root, "gallery", "carol", "front"), ["e.jpg", "f.jpg"])


def make_custom_csv(root, layouts):
    for name in ["img/a.jpg", "img/b.jpg", "img/c.jpg"]:
        layouts.write_image(os.path.join(root, name))
    rows = {"train": ["img/a.jpg,3,0", "img/b.jpg,8,1", "img/c.jpg,8,2"], "query": ["img/c.jpg,5,0"],
            "gallery": ["img/a.jpg,5,2", "img/b.jpg,6,1"]}
    for split, lines in rows.items():
        with open(os.path.join(root, f"{split}.csv"), "w") as f:
            f.write("path,pid,camid\n" + "\n".join(lines) + "\n")


def test_check_finds_custom_data_in_the_root_and_its_folders(tmp_path, capsys, layouts):
    layouts.make_market(str(tmp_path))
    make_custom_folders(str(tmp_path / "people"), layouts)
    make_custom_csv(str(tmp_path / "cars"), layouts)
    os.makedirs(tmp_path / "notes" / "train")  # one split folder alone is not custom data
    assert check_main(str(tmp_path), verify_counts=False) == 0
    out = capsys.readouterr().out
    blocks = {b.split("\n", 1)[0]: b for b in out.split("--- ")[1:]}
    custom = "custom data.root="
    assert sorted(blocks) == [custom + str(tmp_path / "cars"), custom + str(tmp_path / "people"), "market1501"]
    people = blocks[custom + str(tmp_path / "people")]
    #                   ids | images | cameras (camera folders front/side; bob's camera unknown -> 0 in train)
    assert "  train    |     2 |        3 |         1" in people
    assert "  query    |     1 |        1 |         1" in people
    assert "  gallery  |     1 |        2 |         1" in people
    cars = blocks[custom + str(tmp_path / "cars")]
    assert "  train    |     2 |        3 |         3" in cars and "  gallery  |     2 |        2 |         2" in cars

    # the custom root itself given as --root; --verify has nothing to compare it with, and says so
    assert check_main(str(tmp_path / "cars"), verify_counts=True) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"--- custom data.root={tmp_path / 'cars'}\n=> custom loaded")
    assert out.rstrip().endswith("no published counts to compare with") and "counts match" not in out


def test_check_reports_a_broken_custom_layout(tmp_path, capsys, layouts):
    make_custom_folders(str(tmp_path), layouts)
    os.rename(tmp_path / "gallery", tmp_path / "galery")
    with pytest.raises(DatasetError, match=r"1 of 1 datasets .*: custom data.root=.* \(cannot be loaded\)"):
        check_main(str(tmp_path), verify_counts=False)
    assert f"ERROR: custom dataset: expected {tmp_path / 'gallery'}/ (a folder per identity)" in capsys.readouterr().out
