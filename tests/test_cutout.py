"""Cutout in TrainAugment (BDB's person recipe, docs/methods.md §2.3) against its definition: one whole square per
image, its top-left corner uniform over the positions inside the image, filled with 0 after normalisation, applied with
probability ``cutout_prob``."""

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


def expected_mask(top, left, size):
    """Brute force: pixel (r, c) is cut iff it lies in [top, top + size) x [left, left + size)."""
    m = torch.zeros(H, W, dtype=torch.bool)
    for r in range(H):
        for c in range(W):
            m[r, c] = top <= r < top + size and left <= c < left + size
    return m


def test_cutout_matches_definition_with_the_generators_draws():
    aug = augment(prob=1.0, size=5)
    g = torch.Generator().manual_seed(0)  # replays TrainAugment's draws: coin flips, top rows, left columns
    torch.rand(64, generator=g)
    top = torch.randint(0, H - 5 + 1, (64,), generator=g)
    left = torch.randint(0, W - 5 + 1, (64,), generator=g)
    out = aug(batch(64))
    value = (200 / 255 - 0.5) / 0.25
    for i in range(64):
        mask = expected_mask(int(top[i]), int(left[i]), 5)
        cut = out[i] == 0
        assert torch.equal(cut, mask.expand(3, H, W)), i  # same square in every channel
        assert torch.allclose(out[i][~cut], torch.tensor(value))  # the rest is only normalised


def test_squares_are_whole_and_every_position_inside_occurs():
    """BDB's Cutout keeps the full size x size square inside the image (no clipping at the borders)."""
    aug = augment(prob=1.0, size=4)
    top, left, h, w = aug.cutout_boxes(6000, H, W).unbind(1)
    assert (h == 4).all() and (w == 4).all()  # always the whole square
    assert (top + h <= H).all() and (left + w <= W).all()
    assert set(top.tolist()) == set(range(H - 4 + 1)) and set(left.tolist()) == set(range(W - 4 + 1))
    counts = torch.bincount(top, minlength=H - 4 + 1).float()
    assert counts.min() > 0.8 * 6000 / (H - 4 + 1)  # uniform over [0, H - size]


def test_square_larger_than_the_image_is_an_error():
    with pytest.raises(ValueError, match="data.cutout_size"):
        augment(prob=1.0, size=W + 1)(batch(2))


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
