"""Losses against brute-force float64 per-anchor loops."""

import math

import pytest
import torch

from esreid.config import LossConfig
from esreid.losses import batch_hard_triplet, branch_losses, cross_entropy, pairwise_euclidean
from esreid.models.heads import HeadOutput


def _pk_batch(seed, P=4, K=3, D=5):
    g = torch.Generator().manual_seed(seed)
    pids = torch.arange(P).repeat_interleave(K)[torch.randperm(P * K, generator=g)]
    return torch.randn(P * K, D, generator=g, dtype=torch.float64) * 2, pids


def _triplet_loop(x, pids, margin, soft):
    x = x.double()
    terms = []
    for i in range(len(pids)):
        pos = [math.dist(x[i].tolist(), x[j].tolist()) for j in range(len(pids)) if j != i and pids[j] == pids[i]]
        neg = [math.dist(x[i].tolist(), x[j].tolist()) for j in range(len(pids)) if pids[j] != pids[i]]
        if pos and neg:
            d = max(pos) - min(neg)
            terms.append(math.log1p(math.exp(d)) if soft else max(0.0, d + margin))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("soft", [False, True])
def test_batch_hard_triplet_matches_loop(seed, soft):
    x, pids = _pk_batch(seed)
    for margin in (0.3, 5.0):  # 5.0: every anchor active
        got = batch_hard_triplet(x.float(), pids, margin=margin, soft_margin=soft)
        assert got.item() == pytest.approx(_triplet_loop(x, pids, margin, soft), rel=1e-5)


def test_triplet_skips_anchors_without_positive_and_gradient_is_finite():
    x, _ = _pk_batch(1, P=3, K=2)
    pids = torch.tensor([0, 0, 1, 1, 2, 3])  # ids 2 and 3 have a single image: not anchors
    got = batch_hard_triplet(x.float(), pids, margin=1.0)
    assert got.item() == pytest.approx(_triplet_loop(x, pids, 1.0, False), rel=1e-5)
    dup = torch.ones(4, 3, requires_grad=True)  # identical features: zero distances
    batch_hard_triplet(dup, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(dup.grad).all()
    with pytest.raises(ValueError, match=">= 2 identities"):
        batch_hard_triplet(torch.randn(3, 2), torch.tensor([0, 1, 2]))


def test_pairwise_euclidean():
    x, _ = _pk_batch(2)
    ref = torch.cdist(x, x)
    torch.testing.assert_close(pairwise_euclidean(x.float()).double(), ref.clamp(min=1e-6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_cross_entropy_label_smoothing_formula(eps):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 7, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (6,), generator=g)
    ref = 0.0
    for b in range(6):
        lse = math.log(sum(math.exp(v) for v in z[b].tolist()))
        for c in range(7):
            q = (1 - eps) * (c == y[b].item()) + eps / 7  # q_c = (1-ε)1[c=y] + ε/N
            ref -= q * (z[b, c].item() - lse)
    got = cross_entropy(z.float(), y, label_smoothing=eps)
    assert got.item() == pytest.approx(ref / 6, rel=1e-5)


def test_cross_entropy_bad_targets():
    with pytest.raises(ValueError, match=r"in \[0, 4\).*\[0, 4\]"):
        cross_entropy(torch.randn(2, 4), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(torch.randn(2, 4), torch.tensor([0, 1]), label_smoothing=1.0)


def test_branch_losses_weights_and_names():
    x, pids = _pk_batch(3)
    logits = torch.randn(len(pids), 4)
    cfg = LossConfig(ce_weight=0.5, label_smoothing=0.1, triplet_weight=2.0, triplet_margin=0.7, soft_margin=False)
    out = HeadOutput(metric=x.float(), feature=torch.zeros(len(pids), 1), logits=logits)
    terms = branch_losses(out, pids, cfg, prefix="esb_")
    assert set(terms) == {"esb_ce", "esb_triplet"}
    assert terms["esb_ce"].item() == pytest.approx(0.5 * cross_entropy(logits, pids, 0.1).item())
    assert terms["esb_triplet"].item() == pytest.approx(2.0 * _triplet_loop(x, pids, 0.7, False), rel=1e-5)
    assert set(branch_losses(out, pids, LossConfig(triplet_weight=0.0))) == {"ce"}
    assert set(branch_losses(out, pids, LossConfig(ce_weight=0.0))) == {"triplet"}


def test_triplet_is_float32_under_bf16_autocast():
    """The models compute their losses inside the trainer's autocast: the distance matmul must not drop to bf16."""
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(16, 512, generator=g)) + 1.0  # post-ReLU GAP-like features, norm ~ 30
    pids = torch.arange(4).repeat_interleave(4)
    ref = torch.cdist(x.double(), x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = pairwise_euclidean(x)
        loss = batch_hard_triplet(x, pids, margin=0.3)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d.double(), ref, rtol=1e-5, atol=1e-4)
    assert loss.item() == pytest.approx(_triplet_loop(x.double(), pids, 0.3, False), rel=1e-5)
