"""Cutout in TrainAugment (DeVries & Taylor; BDB recipe) against its definition: one clipped square per image,
centre uniform over the pixels, filled with 0 after normalisation, applied with probability ``cutout_prob``."""

import pytest
import torch

from esreid.config import DataConfig
from esreid.data.transforms import TrainAugment

H, W = 12, 6


def augment(prob=1.0, size=4, seed=0):
    cfg = DataConfig(height=H, width=W, flip_prob=0.0, random_erasing=0.0, mean=[0.5] * 3, std=[0.25] * 3,
                     cutout_prob=prob, cutout_size=size)
    return TrainAugment(cfg, seed=seed)


def batch(b):
    return torch.full((b, 3, H, W), 200, dtype=torch.uint8)  # normalised value (200/255-0.5)/0.25 != 0


def expected_mask(cy, cx, size):
    """Brute force: pixel (r, c) is cut iff it lies in [centre - size//2, centre - size//2 + size) on both axes."""
    m = torch.zeros(H, W, dtype=torch.bool)
    for r in range(H):
        for c in range(W):
            m[r, c] = cy - size // 2 <= r < cy - size // 2 + size and cx - size // 2 <= c < cx - size // 2 + size
    return m


def test_cutout_matches_definition_with_the_generators_draws():
    aug = augment(prob=1.0, size=5)
    g = torch.Generator().manual_seed(0)  # replays TrainAugment's draws: coin flips, centre rows, centre columns
    torch.rand(64, generator=g)
    cy = torch.randint(0, H, (64,), generator=g)
    cx = torch.randint(0, W, (64,), generator=g)
    out = aug(batch(64))
    value = (200 / 255 - 0.5) / 0.25
    for i in range(64):
        mask = expected_mask(int(cy[i]), int(cx[i]), 5)
        cut = out[i] == 0
        assert torch.equal(cut, mask.expand(3, H, W)), i  # same square in every channel, clipped at the borders
        assert torch.allclose(out[i][~cut], torch.tensor(value))  # the rest is only normalised


def test_centre_is_uniform_and_squares_are_clipped():
    aug = augment(prob=1.0, size=4)
    boxes = aug.cutout_boxes(6000, H, W)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    assert h.min() == 2 and h.max() == 4 and w.min() == 2 and w.max() == 4  # 2 rows lost at the top border
    # centre row = top + 2, or (bottom - 2) = h - 2 when clipped at the top: every row is a centre, ~equally often
    centre = torch.where(top > 0, top + 2, h - 2)
    counts = torch.bincount(centre, minlength=H).float()
    assert counts.shape[0] == H and counts.min() > 0.8 * 6000 / H


def test_probability_and_off_switch():
    aug = augment(prob=0.5, size=4)
    boxes = aug.cutout_boxes(4000, H, W)
    applied = (boxes[:, 2] > 0).float().mean()
    assert 0.45 < applied < 0.55
    off = augment(prob=0.0)
    before = off.generator.get_state()
    out = off(batch(4))
    assert (out != 0).all() and torch.equal(off.generator.get_state(), before)  # no draws when off


@pytest.mark.parametrize("key,value", [("cutout_prob", 1.5), ("cutout_size", 0)])
def test_bad_settings_name_the_key(key, value):
    cfg = DataConfig(**{key: value})
    with pytest.raises(ValueError, match=f"data.{key}"):
        TrainAugment(cfg)
