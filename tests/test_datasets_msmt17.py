"""MSMT17 V1 / V2 list files: pids from the lists, cameras from the names, list_val only when asked."""

import os

import pytest

from esreid.data.base import DatasetError, build_dataset

LISTS = {
    "list_train.txt": ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0000/0000_001_15_0303morning_0016_1.jpg 0",
                       "0001/0001_000_03_0303noon_0001_0.jpg 1"],
    "list_val.txt": ["0001/0001_001_07_0303noon_0002_0.jpg 1", "0002/0002_000_02_0303noon_0003_0.jpg 2"],
    "list_query.txt": ["0000/0000_000_05_0113morning_0001_0.jpg 0"],
    "list_gallery.txt": ["0000/0000_001_06_0113morning_0002_0.jpg 0", "0003/0003_000_09_0113noon_0002_0.jpg 3", ""],
}


def make_msmt(layouts, root, version="MSMT17_V1", prefix="msmt17"):
    train_dir, test_dir = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}[version]
    base = os.path.join(root, prefix, version)
    for list_name, lines in LISTS.items():
        image_dir = train_dir if list_name in ("list_train.txt", "list_val.txt") else test_dir
        for line in lines:
            if line:
                layouts.write_image(os.path.join(base, image_dir, line.split()[0]))
        os.makedirs(base, exist_ok=True)
        with open(os.path.join(base, list_name), "w") as f:
            f.write("\n".join(lines) + "\n")
    return base


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_msmt17_versions(tmp_path, layouts, version):
    base = make_msmt(layouts, str(tmp_path), version)
    ds = build_dataset("msmt17", str(tmp_path), verbose=False)
    assert ds.data_dir == base
    assert [(os.path.basename(it.path), it.pid, it.camid) for it in ds.train] == [
        ("0000_000_01_0303morning_0015_0.jpg", 0, 0),
        ("0000_001_15_0303morning_0016_1.jpg", 0, 14),
        ("0001_000_03_0303noon_0001_0.jpg", 1, 2),
    ]
    assert [(it.pid, it.camid) for it in ds.query] == [(0, 4)]
    assert [(it.pid, it.camid) for it in ds.gallery] == [(0, 5), (3, 8)]
    assert ds.published["train"] == (1041, 30248)


def test_msmt17_combine_val(tmp_path, layouts):
    make_msmt(layouts, str(tmp_path), "MSMT17_V2", prefix="")
    ds = build_dataset("msmt17", str(tmp_path), combine_val=True, verbose=False)
    assert [(it.pid, it.camid) for it in ds.train] == [(0, 0), (0, 14), (1, 2), (1, 6), (2, 1)]
    assert ds.published["train"] == (1041, 32621)


def test_msmt17_errors(tmp_path, layouts):
    base = make_msmt(layouts, str(tmp_path))
    with open(os.path.join(base, "list_query.txt"), "a") as f:
        f.write("0000/0000_000_05_x.jpg\n")
    with pytest.raises(DatasetError, match=r"list_query.txt line 2: expected '<relative image path> <pid>'"):
        build_dataset("msmt17", str(tmp_path), verbose=False)
    with open(os.path.join(base, "list_query.txt"), "w") as f:
        f.write("0000/0000_000_16_0113morning_0001_0.jpg 0\n")
    with pytest.raises(DatasetError, match="line 1: cannot read the camera from .*camera 01..15"):
        build_dataset("msmt17", str(tmp_path), verbose=False)
    with open(os.path.join(base, "list_query.txt"), "w") as f:
        f.write("0000/0000_000_05_missing.jpg 0\n")
    with pytest.raises(DatasetError, match=f"the listed image {base}/test/0000/0000_000_05_missing.jpg does not exist"):
        build_dataset("msmt17", str(tmp_path), verbose=False)
    open(os.path.join(base, "list_query.txt"), "w").close()
    with pytest.raises(DatasetError, match="list_query.txt split is empty"):
        build_dataset("msmt17", str(tmp_path), verbose=False)
    os.rename(os.path.join(base, "test"), os.path.join(base, "images"))
    with pytest.raises(DatasetError, match="not the image folders 'train/' \\+ 'test/'"):
        build_dataset("msmt17", str(tmp_path), verbose=False)
