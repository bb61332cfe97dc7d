"""Batch DropBlock against its definition (docs/methods.md §2.2): one band of round(ρ_h·H) x round(ρ_w·W) zeroed for
every image and channel, the same region across the batch, no rescaling, identity in eval, every start position
drawn."""

import pytest
import torch

from esreid.erasing.dropblock import BatchDropBlock


def feature_map(b=4, c=3, h=24, w=8):
    torch.manual_seed(0)
    return torch.rand(b, c, h, w, dtype=torch.float64) + 1.0  # no natural zeros


def test_one_band_shared_by_batch_and_channels_without_rescaling():
    block = BatchDropBlock(0.33, 1.0).train()
    x = feature_map()
    for _ in range(20):
        out = block(x)
        zero = out == 0
        band = zero[0, 0]  # (H, W)
        assert (zero == band).all()  # same region for every image and channel
        rows = band.all(dim=1).nonzero().flatten()
        assert len(rows) == round(0.33 * 24) == 8  # rh = round(0.33 * 24)
        assert torch.equal(rows, torch.arange(rows[0], rows[0] + 8))  # one contiguous band
        assert band.sum() == 8 * 8  # rw = round(1.0 * 8): full width, nothing else zeroed
        assert torch.equal(out[~zero], x[~zero])  # kept values unscaled (no 1/keep_prob)


def test_rectangle_for_partial_width_matches_brute_force():
    block = BatchDropBlock(0.5, 0.5).train()
    x = feature_map(h=10, w=6)
    replay = torch.Generator()
    replay.set_state(block.generator.get_state())
    out = block(x)
    top = int(torch.randint(0, 10 - 5 + 1, (1,), generator=replay))
    left = int(torch.randint(0, 6 - 3 + 1, (1,), generator=replay))
    expected = x.clone()
    for r in range(top, top + 5):
        for c in range(left, left + 3):
            expected[:, :, r, c] = 0.0
    assert torch.equal(out, expected)


def test_every_start_row_occurs():
    block = BatchDropBlock(0.33, 1.0).train()
    starts = {block.region(24, 8)[0] for _ in range(500)}
    assert starts == set(range(24 - 8 + 1))  # sx uniform over 0..H-rh
    assert {block.region(24, 8)[1] for _ in range(50)} == {0}  # full width: sy is always 0


def test_identity_in_eval_and_reproducible_from_the_generator():
    block = BatchDropBlock().eval()
    x = feature_map()
    assert block(x) is x
    a, b = BatchDropBlock().train(), BatchDropBlock().train()
    b.generator.set_state(a.generator.get_state())
    assert all(torch.equal(a(x), b(x)) for _ in range(5))


def test_gradient_is_masked():
    block = BatchDropBlock(0.33, 1.0).train()
    x = feature_map(b=2, c=2).requires_grad_(True)
    out = block(x)
    out.sum().backward()
    assert torch.equal(x.grad, (out != 0).double())


@pytest.mark.parametrize("ratios", [(0.0, 1.0), (0.3, 1.5), (-0.1, 0.5)])
def test_bad_ratios_are_rejected(ratios):
    with pytest.raises(ValueError, match="ratio"):
        BatchDropBlock(*ratios)
