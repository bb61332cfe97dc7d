"""Shared drawing helpers: image layouts, the heat-map overlay against its formula, atomic writes."""

import numpy as np
import pytest
import torch
from matplotlib import colormaps

from esreid.files import atomic_write
from esreid.viz.images import as_rgb, overlay, upsample_map


def test_as_rgb_reads_every_layout_the_same(tmp_path):
    from PIL import Image

    hwc = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    Image.fromarray(hwc).save(tmp_path / "x.png")
    for x in (hwc, hwc.transpose(2, 0, 1), torch.from_numpy(hwc).permute(2, 0, 1), tmp_path / "x.png"):
        assert np.array_equal(as_rgb(x), hwc)
    with pytest.raises(ValueError, match="RGB"):
        as_rgb(np.zeros((6, 4), np.uint8))


def test_upsample_map_is_bilinear_and_peak_normalised():
    m = torch.tensor([[0.0, 2.0], [4.0, 8.0]])
    up = upsample_map(m, (4, 4))
    assert up.shape == (4, 4) and up.max() == pytest.approx(1.0)
    # half-pixel centres (align_corners=False): output pixel (0, 0) sits on input pixel (0, 0); (1, 1) at 1/4 of the way
    assert up[0, 0] == pytest.approx(0.0)
    assert up[1, 1] == pytest.approx((0.75 * 0.75 * 0 + 0.75 * 0.25 * 2 + 0.25 * 0.75 * 4 + 0.25 * 0.25 * 8) / 8)
    assert not upsample_map(torch.zeros(2, 2), (3, 3)).any()  # an all-zero map stays zero


def test_overlay_blends_the_jet_colour_of_the_map():
    rgb = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    m = torch.tensor([[0.0, 2.0], [4.0, 8.0]])
    got = overlay(rgb, m, alpha=0.4).astype(float)
    heat = colormaps["jet"](upsample_map(m, (4, 4)))[..., :3] * 255
    assert np.abs(got - (0.6 * rgb + 0.4 * heat)).max() <= 0.5
    assert got[3, 3, 0] > got[3, 3, 2] and overlay(rgb, m, alpha=0.0).tolist() == rgb.tolist()


def test_atomic_write_replaces_whole_files_only(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "f.bin"
    assert atomic_write(path, b"old") == str(path) and path.read_bytes() == b"old"
    atomic_write(path, "néw")
    assert path.read_text(encoding="utf-8") == "néw"

    def fail(src, dst):
        raise OSError("interrupted")

    monkeypatch.setattr("esreid.viz.images.os.replace", fail)
    with pytest.raises(OSError):
        atomic_write(path, b"half")
    assert path.read_text(encoding="utf-8") == "néw" and sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]
