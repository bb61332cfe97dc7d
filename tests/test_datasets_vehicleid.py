"""VehicleID: train / test lists, 800/1600/2400 test sets, every test image in query, unique camids."""

import os

import pytest

from esreid.data.base import DatasetError, build_dataset


def test_vehicleid_sizes(tmp_path, layouts):
    layouts.make_vehicleid(str(tmp_path))
    ds = build_dataset("vehicleid", str(tmp_path), verbose=False)
    assert [(os.path.basename(it.path), it.pid, it.camid) for it in ds.train] == [
        ("0000001.jpg", 0, 0), ("0000002.jpg", 0, 1), ("0000003.jpg", 1, 2)]
    assert [(os.path.basename(it.path), it.pid, it.camid) for it in ds.query] == [
        ("0000100.jpg", 7, 0), ("0000101.jpg", 7, 1), ("0000102.jpg", 8, 2)]
    assert ds.gallery == [] and ds.protocol == "vehicleid"
    assert ds.published["query"] == (800, 6493)
    large = build_dataset("vehicleid", str(tmp_path), test_size=2400, verbose=False)
    assert [(it.pid, it.camid) for it in large.query] == [(11, 0)] and large.published["query"] == (2400, 19777)
    assert len(build_dataset("vehicleid", str(tmp_path), test_size=1600, verbose=False).query) == 2


def test_vehicleid_errors(tmp_path, layouts):
    base = layouts.make_vehicleid(str(tmp_path), "vehicleid")
    with pytest.raises(DatasetError, match=r"test_size.: expected one of \(800, 1600, 2400\), got 13164"):
        build_dataset("vehicleid", str(tmp_path), test_size=13164, verbose=False)
    with open(os.path.join(base, "train_test_split", "test_list_800.txt"), "a") as f:
        f.write("0000999 3\n")
    with pytest.raises(DatasetError, match=r"test_list_800.txt line 4: the listed image .*image/0000999.jpg does not"):
        build_dataset("vehicleid", str(tmp_path), verbose=False)
    with open(os.path.join(base, "train_test_split", "test_list_800.txt"), "w") as f:
        f.write("0000100,7\n")
    with pytest.raises(DatasetError, match="line 1: expected '<image name> <vehicle id>', got '0000100,7'"):
        build_dataset("vehicleid", str(tmp_path), verbose=False)
    os.remove(os.path.join(base, "train_test_split", "train_list.txt"))
    with pytest.raises(DatasetError, match="only part of the expected layout: missing 'train_test_split/train_list"):
        build_dataset("vehicleid", str(tmp_path), verbose=False)
