"""Occluded-DukeMTMC on a generated copy of what the authors' convert_duke_to_occduke.py writes: the three image
folders, the three name lists beside them (the script reads them from its output folder), a query image that came
from the original gallery, and the leftovers of an unfinished conversion."""

import os

import pytest

from esreid.data.base import DatasetError, build_dataset

# the first names of the authors' lists (lightas/Occluded-DukeMTMC-Dataset, Occluded_Duke/*.list), one line each
TRAIN = ["0001_c2_f0046182.jpg", "0001_c2_f0046302.jpg", "0003_c1_f0044886.jpg"]
QUERY = ["0019_c1_f0051230.jpg", "0019_c1_f0051350.jpg"]  # occluded; moved from the original gallery
GALLERY = ["0002_c1_f0044158.jpg", "0019_c6_f0111111.jpg", "5000_c3_f0100000.jpg"]


def write_converted(layouts, root, lists=True):
    base = os.path.join(root, "Occluded_Duke")
    layouts.make_layout(root, "Occluded_Duke", {"bounding_box_train": TRAIN + ["Thumbs.db"], "query": QUERY,
                                                 "bounding_box_test": GALLERY})
    if lists:
        for name, names in (("train", TRAIN), ("query", QUERY), ("gallery", GALLERY)):
            with open(os.path.join(base, f"{name}.list"), "w") as f:
                f.write("\n".join(names) + "\n")  # one name per line, a final newline (the authors' files)
    return base


def test_parses_the_converted_layout(tmp_path, layouts):
    base = write_converted(layouts, str(tmp_path))
    ds = build_dataset("occluded_duke", str(tmp_path), verbose=False)
    assert layouts.triples(ds.train, base) == [("bounding_box_train/0001_c2_f0046182.jpg", 0, 1),
                                               ("bounding_box_train/0001_c2_f0046302.jpg", 0, 1),
                                               ("bounding_box_train/0003_c1_f0044886.jpg", 1, 0)]
    assert layouts.triples(ds.query, base) == [("query/0019_c1_f0051230.jpg", 19, 0),
                                               ("query/0019_c1_f0051350.jpg", 19, 0)]
    assert [(p, c) for _, p, c in layouts.triples(ds.gallery, base)] == [(2, 0), (19, 5), (5000, 2)]
    assert ds.ignored_files == 1 and ds.protocol == "market"


def test_verify_compares_with_its_own_counts_not_dukes(tmp_path, layouts, capsys):
    """``datasets check --verify`` compares a converted copy with Occluded-DukeMTMC's counts, those of the authors'
    lists (lightas/Occluded-DukeMTMC-Dataset at dcba185: train.list 15,618 lines of 702 ids, query.list 2,210 of 519,
    gallery.list 17,661 of 1,110; the paper's Table 1), not with the DukeMTMC-reID counts it would inherit (train
    702 / 16,522, query 702 / 2,228)."""
    from esreid.data.check import check_main

    write_converted(layouts, str(tmp_path))
    with pytest.raises(DatasetError, match=r"occluded_duke \(counts\)"):
        check_main(str(tmp_path), verify_counts=True)
    out = capsys.readouterr().out
    mismatches = [line for line in out.splitlines() if "MISMATCH" in line]
    for text in ("train: expected 702 ids / 15618 images, found 2 / 3",
                 "query: expected 519 ids / 2210 images, found 1 / 2",
                 "gallery: expected 1110 ids / 17661 images, found 3 / 3"):
        assert any(text in line for line in mismatches), (text, mismatches)
    assert "16522" not in out and "2228" not in out


def test_without_the_lists_the_folders_are_read_as_they_are(tmp_path, layouts):
    write_converted(layouts, str(tmp_path), lists=False)
    assert len(build_dataset("occluded_duke", str(tmp_path), verbose=False).gallery) == 3


def test_a_split_that_differs_from_its_list_is_reported(tmp_path, layouts):
    base = write_converted(layouts, str(tmp_path))
    os.remove(os.path.join(base, "query", QUERY[1]))
    with pytest.raises(DatasetError, match=r"query lacks 1 of the 2 images .*query.list lists \(e.g. "
                                           r"0019_c1_f0051350.jpg\)"):
        build_dataset("occluded_duke", str(tmp_path), verbose=False)
    layouts.write_files(os.path.join(base, "query"), [QUERY[1], "0020_c2_f0000001.jpg"])
    with pytest.raises(DatasetError, match="holds 1 image.* does not list .*0020_c2_f0000001.jpg"):
        build_dataset("occluded_duke", str(tmp_path), verbose=False)


def test_an_unfinished_conversion_is_named_not_taken_for_duke(tmp_path, layouts):
    # the script extracted DukeMTMC-reID.zip into Occluded_Duke/ and stopped before copying the splits out
    layouts.make_layout(str(tmp_path), "Occluded_Duke/DukeMTMC-reID", layouts.DUKE)
    with pytest.raises(DatasetError, match="convert_duke_to_occduke.py did not finish"):
        build_dataset("occluded_duke", str(tmp_path), verbose=False)


def test_beside_dukemtmc_each_loader_finds_its_own(tmp_path, layouts):
    write_converted(layouts, str(tmp_path))
    layouts.make_layout(str(tmp_path), "DukeMTMC-reID", layouts.DUKE)
    assert len(build_dataset("occluded_duke", str(tmp_path), verbose=False).query) == 2
    assert len(build_dataset("dukemtmcreid", str(tmp_path), verbose=False).query) == 1


def test_datasets_check_finds_it_but_not_in_a_flat_dukemtmc_copy(tmp_path, layouts):
    from esreid.data.check import found_datasets

    write_converted(layouts, str(tmp_path / "a"))
    assert [name for _, name, _, _ in found_datasets(str(tmp_path / "a"))] == ["occluded_duke"]
    layouts.make_layout(str(tmp_path / "b"), "", layouts.DUKE)  # DukeMTMC-reID extracted flat into the root
    assert "occluded_duke" not in [name for _, name, _, _ in found_datasets(str(tmp_path / "b"))]
