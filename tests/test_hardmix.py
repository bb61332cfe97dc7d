"""Attentive Hard-Mix (docs/methods.md §3.3) against hand-worked examples."""

import pytest
import torch

from esreid.erasing.hardmix import AttentiveHardMix, block_scores, draw_partners, hard_mix, salient_blocks


def test_hand_worked_blocks_and_mix():
    # 4x4 map, 2x2 blocks -> 2x2 = 4 blocks. Image 0: block (1,0) scores 40, (0,1) 20 -> top-2 = (1,0), (0,1).
    cam = torch.zeros(2, 4, 4)
    cam[0, 2:, :2] = 10.0
    cam[0, :2, 2:] = 5.0
    cam[0, 0, 0] = 3.0  # block (0,0) scores 3
    cam[1, 0:2, 0:2] = 1.0  # image 1: block (0,0) 4, block (1,1) 8
    cam[1, 3, 3] = 8.0
    assert block_scores(cam, (2, 2)).tolist() == [[[3.0, 20.0], [40.0, 0.0]], [[4.0, 0.0], [0.0, 8.0]]]
    omega = salient_blocks(cam, (2, 2), 2)
    expected = torch.tensor([
        [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]],
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]],
    ], dtype=torch.float32)
    assert torch.equal(omega, expected)

    p = torch.arange(2 * 3 * 16, dtype=torch.float32).reshape(2, 3, 4, 4)
    mixed = hard_mix(p, omega, torch.tensor([1, 0]))
    for i, j in ((0, 1), (1, 0)):
        for u in range(4):
            for v in range(4):
                src = j if expected[i, u, v] else i  # exactly the top-k blocks come from the partner, all channels
                assert torch.equal(mixed[i, :, u, v], p[src, :, u, v])


def test_pmm_grid_replaces_k_blocks_of_3x2_cells_on_24x8():
    torch.manual_seed(0)
    omega = salient_blocks(torch.rand(5, 24, 8), (3, 2), 3)
    assert omega.sum(dim=(1, 2)).tolist() == [18.0] * 5  # 3 blocks x 6 cells = 18 / 192 cells
    blocks = omega.reshape(5, 8, 3, 4, 2)
    assert torch.equal(blocks.amin(dim=(2, 4)), blocks.amax(dim=(2, 4)))  # whole blocks, aligned to the grid


def test_partners_have_another_label_and_are_uniform():
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([draw_partners(pids, gen) for _ in range(600)])  # (600, 6)
    assert (pids[draws] != pids).all()
    counts = torch.bincount(draws[:, 0], minlength=6)
    assert counts[:2].tolist() == [0, 0] and (counts[2:] > 100).all()  # 4 candidates, 150 expected each


def test_module_uses_its_generator_fresh_per_call_and_reproducibly():
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    p = torch.arange(1.0, 9.0)[:, None, None, None].expand(8, 2, 4, 2).contiguous()  # image i holds the value i+1
    cam = torch.rand(8, 4, 2, generator=torch.Generator().manual_seed(1))
    mix = AttentiveHardMix((2, 1), 2)
    state = mix.generator.get_state()
    first, omega = mix(p, cam, pids)
    second, _ = mix(p, cam, pids)
    src = first[:, 0].long() - 1  # which image each cell came from
    assert torch.equal(src[omega == 0], torch.arange(8)[:, None, None].expand(8, 4, 2)[omega == 0])
    partner = (src * omega.long()).amax(dim=(1, 2))  # the source of the mixed cells (k >= 1 per image)
    assert ((src == partner[:, None, None]) | (omega == 0)).all() and (pids[partner] != pids).all()
    assert not torch.equal(first, second)  # fresh partners per call (8 draws, P(all equal) = (1/6)^8)
    mix.generator.set_state(state)  # restoring the checkpointed generator replays the draws
    assert torch.equal(mix(p, cam, pids)[0], first)


def test_gradient_flows_to_the_image_and_its_partner():
    torch.manual_seed(0)
    p = torch.randn(3, 2, 4, 2, dtype=torch.float64, requires_grad=True)
    omega = salient_blocks(torch.rand(3, 4, 2, dtype=torch.float64), (2, 1), 1)
    partners = torch.tensor([2, 0, 0])
    w = torch.randn(3, 2, 4, 2, dtype=torch.float64)
    (hard_mix(p, omega, partners) * w).sum().backward()
    m = omega[:, None]
    expected = (1 - m) * w  # own cells
    for j, src in enumerate(partners.tolist()):
        expected[src] += m[j] * w[j]  # cells lent to image j
    torch.testing.assert_close(p.grad, expected)
    assert (p.grad[0] != 0).any() and (p.grad[2][m[0].expand(2, 4, 2) > 0] != 0).all()


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="not a multiple of the 3x2 block size"):
        block_scores(torch.zeros(1, 16, 7), (3, 2))
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 4\]"):
        salient_blocks(torch.zeros(1, 4, 4), (2, 2), 5)
    with pytest.raises(ValueError, match="one identity"):
        draw_partners(torch.tensor([3, 3, 3]), torch.Generator())
    with pytest.raises(ValueError, match="model.block_size"):
        AttentiveHardMix((3,), 3)
    with pytest.raises(ValueError, match="does not match"):
        AttentiveHardMix((1, 1), 1)(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 5), torch.tensor([0, 1]))
