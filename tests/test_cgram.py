"""CG-RAM (eqs. 2-5) against brute-force float64 computations on a tiny network."""

import math

import pytest
import torch
from torch import nn

from esreid.erasing.cgram import LayerError, batch_confidence, cgram_batch, cgram_pair, easiest_positive, salient_map
from esreid.models.base import ReIDModel, RetrievalRule


class TinyNet(ReIDModel):
    """stem (conv, BN, in-place ReLU) -> layer (the default CG-RAM layer) -> two branch features, like ES-Net."""

    saliency_layer = "layer"

    def __init__(self, rule=RetrievalRule(flip=False)):
        super().__init__(cfg=None, num_classes=0, retrieval=rule)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.layer = nn.Sequential(nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU())
        self.head_a = nn.Sequential(nn.Flatten(), nn.Linear(5 * 4 * 3, 6), nn.BatchNorm1d(6))
        self.head_b = nn.Linear(5, 3)

    def head(self, a):
        return [self.head_a(a), self.head_b(a.mean(dim=(2, 3)))]

    def features(self, x):
        return self.head(self.layer(self.stem(x)))

    def forward_train(self, images, pids):  # only to collect running statistics
        return {"zero": sum(f.sum() for f in self.features(images)) * 0}


def make_net(rule=RetrievalRule(flip=False)):
    torch.manual_seed(0)
    net = TinyNet(rule).double()
    net.train()
    for _ in range(2):  # non-trivial running statistics
        net(torch.randn(6, 3, 8, 6, dtype=torch.float64), torch.zeros(6))
    return net


def retrieval(feats, normalize=True):
    return torch.cat([f / f.norm(dim=1, keepdim=True) if normalize else f for f in feats], dim=1)


def brute_map(score_of_a, a):
    """M = relu(sum_k dS/dA * A) with the Jacobian of S taken over the whole tensor A (no hooks, no shortcut)."""
    grad = torch.autograd.functional.jacobian(score_of_a, a)
    return torch.relu((grad * a).sum(dim=1))


def test_cgram_pair_matches_brute_force_and_leaves_model_untouched():
    net = make_net()
    q, g = torch.randn(2, 3, 8, 6, dtype=torch.float64), torch.randn(2, 3, 8, 6, dtype=torch.float64)
    buffers = {k: v.clone() for k, v in net.state_dict().items()}

    mq, mg, s = cgram_pair(net, q, g)  # the model's default layer
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
    maps = cgram_batch(net, images, pids, net.layer, detach_weight=detach_weight)

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
    literal = cgram_batch(net, images, pids, "layer")
    detached = cgram_batch(net, images, pids, "layer", detach_weight=True)
    assert not torch.allclose(literal, detached)


def test_layer_errors():
    net = make_net()
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    with pytest.raises(LayerError, match="'nolayer' is not a module of .* did you mean"):
        cgram_pair(net, x, x, "nolayer")
    with pytest.raises(ValueError, match="same shape"):
        cgram_pair(net, x, x[:1])
    with pytest.raises(LayerError, match=r"Sequential must output a \(B, C, h, w\) map, got \(4, 6\)"):
        cgram_pair(net, x, x, "head_a")
    with pytest.raises(LayerError, match="2 times for 1 forward"):
        cgram_pair(net, x, x, _twice(net))


def _twice(net):
    """Make the layer's ReLU run twice per forward (a layer off the single path of the features)."""
    relu = net.layer[1]
    net.layer.append(relu)
    return relu


def brute_pair_maps(net, q, g, layer_in, layer_out):
    """Test-time CG-RAM by definition for any retrieval rule: ``layer_in`` maps images to the layer's output A,
    ``layer_out`` maps A to the branch features; with flip the mirrored images' A' enters too, each pass's
    contributions sum_k dS/dA^k A^k are taken from the full Jacobian, the mirrored one flipped back, summed, ReLU."""
    rule = net.retrieval
    x = torch.cat([q, g])
    net.eval()
    with torch.no_grad():
        a = layer_in(x)
        a_m = layer_in(torch.flip(x, dims=[3]))
    b = len(q)

    def feats(a_, a_m_):
        branches = layer_out(a_)
        if rule.flip:
            branches = [u + v for u, v in zip(branches, layer_out(a_m_))]
        return retrieval(branches, rule.normalize)

    def score(a_, a_m_):
        f = feats(a_, a_m_)
        if rule.metric == "cosine":
            return sum((f[i] @ f[i + b]) / (f[i].norm() * f[i + b].norm()) for i in range(b))  # eq. 2
        return -sum(((f[i] - f[i + b]) ** 2).sum() for i in range(b))  # minus the squared Euclidean distance

    ja, ja_m = torch.autograd.functional.jacobian(score, (a, a_m))
    total = (ja * a).sum(dim=1)
    if rule.flip:
        total = total + torch.flip((ja_m * a_m).sum(dim=1), dims=[2])
    return torch.relu(total), score(a, a_m)


@pytest.mark.parametrize("rule", [RetrievalRule(flip=True), RetrievalRule(flip=False, normalize=False,
                                                                          metric="euclidean"),
                                  RetrievalRule(flip=True, normalize=False, metric="euclidean")])
def test_cgram_pair_explains_the_similarity_of_the_retrieval_rule(rule):
    """The map explains what the evaluator ranks: flip-summed features when the rule flips, per-branch L2 or not,
    cosine or (minus) squared Euclidean distance. A map computed with the unflipped cosine of normalised features
    (the explanation of another similarity) fails this test."""
    net = make_net(rule)
    q, g = torch.randn(2, 3, 8, 6, dtype=torch.float64), torch.randn(2, 3, 8, 6, dtype=torch.float64)
    mq, mg, s = cgram_pair(net, q, g)
    expected, total = brute_pair_maps(net, q, g, lambda x: net.layer(net.stem(x)), net.head)
    torch.testing.assert_close(torch.cat([mq, mg]), expected)
    assert (expected > 0).any()
    assert float(s.sum()) == pytest.approx(float(total.detach()), rel=1e-9)


def test_cgram_explains_a_batchnorm_output_followed_by_an_in_place_relu():
    """A BatchNorm output is a valid CG-RAM layer even though an in-place ReLU follows it (it used to fail with 'a
    leaf Variable that requires grad is being used in an in-place operation')."""
    net = make_net(RetrievalRule(flip=True))
    q, g = torch.randn(2, 3, 8, 6, dtype=torch.float64), torch.randn(2, 3, 8, 6, dtype=torch.float64)
    mq, mg, _ = cgram_pair(net, q, g, "stem.1")
    expected, _ = brute_pair_maps(net, q, g, lambda x: net.stem[1](net.stem[0](x)),
                                  lambda a: net.head(net.layer(torch.relu(a))))
    assert mq.shape == (2, 8, 6)
    torch.testing.assert_close(torch.cat([mq, mg]), expected)
