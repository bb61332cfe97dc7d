"""DukeMTMC-reID and VeRi-776 through the shared <pid>_c<cam> parser, on generated layouts."""

import os

import pytest

from esreid.data.base import DatasetError, build_dataset


def test_duke(tmp_path, layouts):
    base = layouts.make_layout(str(tmp_path), "dukemtmc-reid/DukeMTMC-reID", layouts.DUKE)
    ds = build_dataset("dukemtmcreid", str(tmp_path), verbose=False)
    assert layouts.triples(ds.train, base) == [
        ("bounding_box_train/0001_c2_f0046182.jpg", 0, 1),
        ("bounding_box_train/0001_c6_f0160252.jpg", 0, 5),
        ("bounding_box_train/0005_c8_f0001234.jpg", 1, 7),
    ]
    assert layouts.triples(ds.query, base) == [("query/0001_c1_f0050000.jpg", 1, 0)]
    assert [(p, c) for _, p, c in layouts.triples(ds.gallery, base)] == [(1, 4), (7140, 2)]
    assert ds.ignored_files == 1 and ds.published["gallery"] == (1110, 17661)


def test_duke_rejects_camera_9(tmp_path, layouts):
    layouts.make_layout(str(tmp_path), "DukeMTMC-reID", {**layouts.DUKE, "query": ["0001_c9_f0050000.jpg"]})
    with pytest.raises(DatasetError, match="camera 9 out of range .*camera 1..8"):
        build_dataset("dukemtmcreid", str(tmp_path), verbose=False)


def test_veri(tmp_path, layouts):
    base = layouts.make_layout(str(tmp_path), "veri", layouts.VERI)
    ds = build_dataset("veri776", str(tmp_path), verbose=False)
    assert layouts.triples(ds.train, base) == [
        ("image_train/0002_c002_00030600_0.jpg", 0, 1),
        ("image_train/0002_c003_00030605_1.jpg", 0, 2),
        ("image_train/0776_c020_00000001_0.jpg", 1, 19),
    ]
    assert layouts.triples(ds.query, base) == [("image_query/0005_c010_00012345_0.jpg", 5, 9)]
    assert sorted(c for _, _, c in layouts.triples(ds.gallery, base)) == [0, 10]
    assert ds.ignored_files == 1 and ds.protocol == "market"


def test_veri_errors(tmp_path, layouts):
    layouts.make_layout(str(tmp_path), "veri", {**layouts.VERI, "image_test": ["0005_c021_00012399_0.jpg"]})
    with pytest.raises(DatasetError, match="camera 21 out of range"):
        build_dataset("veri776", str(tmp_path), verbose=False)
    with pytest.raises(DatasetError, match=r"no 'image_train' under .*empty \(looked in .*empty/veri, "):
        os.makedirs(tmp_path / "empty")
        build_dataset("veri776", str(tmp_path / "empty"), verbose=False)
