"""CG-RAM (eqs. 2-5) against brute-force float64 computations on a tiny network."""

import math

import pytest
import torch
from torch import nn

from esreid.erasing.cgram import batch_confidence, cgram_batch, cgram_pair, easiest_positive, salient_map


class TinyNet(nn.Module):
    """stem -> layer (the CG-RAM layer) -> head; eval forward returns two branch features like ES-Net."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.layer = nn.Sequential(nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU())
        self.head_a = nn.Sequential(nn.Flatten(), nn.Linear(5 * 4 * 3, 6), nn.BatchNorm1d(6))
        self.head_b = nn.Linear(5, 3)

    def head(self, a):
        return [self.head_a(a), self.head_b(a.mean(dim=(2, 3)))]

    def forward(self, x):
        return self.head(self.layer(self.stem(x)))


def make_net():
    torch.manual_seed(0)
    net = TinyNet().double()
    net.train()
    for _ in range(2):  # non-trivial running statistics
        net(torch.randn(6, 3, 8, 6, dtype=torch.float64))
    return net


def retrieval(feats):
    return torch.cat([f / f.norm(dim=1, keepdim=True) for f in feats], dim=1)


def brute_map(score_of_a, a):
    """M = relu(sum_k dS/dA * A) with the Jacobian of S taken over the whole tensor A (no hooks, no shortcut)."""
    grad = torch.autograd.functional.jacobian(score_of_a, a)
    return torch.relu((grad * a).sum(dim=1))


def test_cgram_pair_matches_brute_force_and_leaves_model_untouched():
    net = make_net()
    q, g = torch.randn(2, 3, 8, 6, dtype=torch.float64), torch.randn(2, 3, 8, 6, dtype=torch.float64)
    buffers = {k: v.clone() for k, v in net.state_dict().items()}

    mq, mg, s = cgram_pair(net, "layer", q, g)
    assert net.training and net.stem[1].training  # modes restored

    net.eval()
    with torch.no_grad():
        a = net.layer(net.stem(torch.cat([q, g])))

    def score(a_):
        f = retrieval(net.head(a_))
        cos = [(f[i] @ f[i + 2]) / (f[i].norm() * f[i + 2].norm()) for i in range(2)]  # eq. 2
        return sum(cos)

    expected = brute_map(score, a)
    assert mq.shape == (2, 4, 3) and mg.shape == (2, 4, 3)
    torch.testing.assert_close(torch.cat([mq, mg]), expected)
    assert (expected > 0).any() and (expected == 0).any()  # the ReLU acts on both sides
    f = retrieval(net.head(a))
    torch.testing.assert_close(s, torch.nn.functional.cosine_similarity(f[:2], f[2:]))
    assert all(p.grad is None for p in net.parameters())  # no gradient into the parameters
    for k, v in net.state_dict().items():
        assert torch.equal(v, buffers[k]), k  # no running-statistic update


def test_cgram_is_per_location_not_grad_cam():
    """With a head that weights locations differently, CG-RAM differs from the spatially averaged Grad-CAM."""
    a = torch.rand(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[[[1.0, -1.0], [0.0, 2.0]]]], dtype=torch.float64)
    f = (a * w).flatten(1)
    ref = torch.ones_like(f)
    m = salient_map(torch.nn.functional.cosine_similarity(f, ref).sum(), a)
    assert m[0, 0, 1] == 0 and m[0, 1, 1] > 0  # the location with a negative gradient is not salient


def test_easiest_positive_hand_worked():
    # angles (degrees) of 2-D features; ids: 0 0 0 1 1 2
    angles = torch.tensor([0.0, 10.0, 50.0, 90.0, 180.0, 45.0])
    f = torch.stack([torch.cos(torch.deg2rad(angles)), torch.sin(torch.deg2rad(angles))], dim=1) * torch.tensor(
        [[1.0], [3.0], [0.5], [2.0], [1.0], [1.0]]
    )  # norms differ: the choice is by cosine, not by raw dot product
    pids = torch.tensor([0, 0, 0, 1, 1, 2])
    index, valid = easiest_positive(f, pids)
    # sample 0: 10deg (1) beats 50deg (2); 1: 0deg (0); 2: 10deg (1); 3 and 4: each other; 5: no positive (itself)
    assert index.tolist() == [1, 0, 1, 4, 3, 5]
    assert valid.tolist() == [True, True, True, True, True, False]


def test_batch_confidence_hand_worked():
    angles = torch.tensor([0.0, 60.0, 90.0, 30.0])
    f = torch.stack([torch.cos(torch.deg2rad(angles)), torch.sin(torch.deg2rad(angles))], dim=1)
    pids = torch.tensor([0, 0, 1, 1])
    # pairs: 0->1 cos60, 1->0 cos60, 2->3 cos60, 3->2 cos60 -> S_batch = 4 * e^0.5 * 0.5
    expected = 4 * math.exp(0.5) * 0.5
    assert batch_confidence(f, pids).item() == pytest.approx(expected, rel=1e-6)


def brute_batch_score(feats, pids, detach_weight=False):
    """Eq. 5 by explicit loops: easiest positive = smallest Euclidean distance between L2-normalised vectors."""
    fn = feats / feats.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(len(pids)):
        cands = [j for j in range(len(pids)) if j != i and pids[j] == pids[i]]
        if not cands:
            continue
        p = min(cands, key=lambda j: (fn[i] - fn[j]).norm().item())
        s = (feats[i] @ feats[p]) / (feats[i].norm() * feats[p].norm())
        w = torch.exp(s.detach() if detach_weight else s)
        total = total + w * s
    return total


@pytest.mark.parametrize("detach_weight", [False, True])
def test_cgram_batch_matches_brute_force(detach_weight):
    net = make_net()
    images = torch.randn(7, 3, 8, 6, dtype=torch.float64)
    pids = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    maps = cgram_batch(net, net.layer, images, pids, detach_weight=detach_weight)

    net.eval()
    with torch.no_grad():
        a = net.layer(net.stem(images))
    expected = brute_map(lambda a_: brute_batch_score(retrieval(net.head(a_)), pids, detach_weight), a)
    torch.testing.assert_close(maps, expected)
    assert all(p.grad is None for p in net.parameters())


def test_detached_weight_changes_the_map():
    net = make_net()
    images = torch.randn(4, 3, 8, 6, dtype=torch.float64)
    pids = torch.tensor([0, 0, 1, 1])
    literal = cgram_batch(net, "layer", images, pids)
    detached = cgram_batch(net, "layer", images, pids, detach_weight=True)
    assert not torch.allclose(literal, detached)


def test_layer_errors():
    net = make_net()
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    with pytest.raises(KeyError, match="nolayer"):
        cgram_pair(net, "nolayer", x, x)
    with pytest.raises(ValueError, match="same shape"):
        cgram_pair(net, "layer", x, x[:1])
    twice = nn.Sequential(net.stem, net.layer[1], net.layer[1], nn.Flatten())
    with pytest.raises(RuntimeError, match="2 times"):
        cgram_pair(twice, twice[1], x, x)


def test_visualize_main_writes_a_png(tmp_path):
    from PIL import Image

    from esreid.models import build_model
    from esreid.models.esnet import ESNetConfig
    from esreid.viz.saliency import visualize_main

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("model: {name: esnet, backbone: resnet_tiny}\ndata: {height: 32, width: 16}\n")
    torch.manual_seed(0)
    model = build_model(ESNetConfig(backbone="resnet_tiny"), num_classes=5)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    for name in ("q.png", "g.png"):
        Image.fromarray((torch.rand(40, 20, 3) * 255).byte().numpy()).save(tmp_path / name)
    out = tmp_path / "out" / "pair.png"
    args = ["--config", str(cfg_path), "--weights", str(tmp_path / "w.pth"), "--query", str(tmp_path / "q.png"),
            "--gallery", str(tmp_path / "g.png"), "--out", str(out)]
    assert visualize_main(args) == 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > img.height


@pytest.mark.parametrize("name", ["baseline", "esnet", "bdb", "pmm", "aelm"])
def test_default_layer_runs_in_the_eval_forward_of_every_model(name):
    """``esreid visualize`` without --layer: the default CG-RAM layer must be one the retrieval forward runs (AELM's
    erasing head is also named ``heads.layer4`` but is train-only) and must give a non-zero map."""
    from esreid.models import MODELS, build_model
    from esreid.viz.saliency import default_layer

    torch.manual_seed(0)
    model = build_model(MODELS.meta(name)["config"](backbone="resnet_tiny"), num_classes=3).eval()
    x = torch.randn(2, 3, 64, 32)
    m_q, m_g, _ = cgram_pair(model, default_layer(model), x[:1], x[1:])
    assert m_q.shape == m_g.shape == (1, 4, 2) and float(m_q.sum() + m_g.sum()) > 0
