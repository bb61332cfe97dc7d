"""Grad-CAM of the true-ID logit (docs/methods.md §3.2) against a brute-force float64 computation on a tiny network."""

import copy

import pytest
import torch
from torch import nn

from esreid.erasing.gradcam import grad_cam, true_class_score


class TinyNet(nn.Module):
    """stem -> G (the Grad-CAM map, B x 5 x 4 x 3) -> GAP -> Linear -> BN1d -> Linear -> logits (B, 4)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.BatchNorm2d(5), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4))

    def logits(self, g):
        return self.head(g.mean(dim=(2, 3)))


def make_net():
    torch.manual_seed(0)
    net = TinyNet().double()
    net.train()
    for _ in range(2):  # non-trivial running statistics
        net.logits(net.stem(torch.randn(6, 3, 8, 6, dtype=torch.float64)))
    return net


def brute_cam(net, g, pids):
    """alpha_{i,k} = mean_{u,v} of the full Jacobian of score = sum_i z[i, y_i]; C = relu(sum_k alpha G), by loops."""
    net = copy.deepcopy(net)  # the Jacobian re-runs the head (train-mode BN statistics move on the copy only)
    jac = torch.autograd.functional.jacobian(lambda t: sum(net.logits(t)[i, y] for i, y in enumerate(pids)), g)
    b, c, h, w = g.shape
    cam = torch.zeros(b, h, w, dtype=torch.float64)
    for i in range(b):
        alpha = [sum(jac[i, k, u, v] for u in range(h) for v in range(w)) / (h * w) for k in range(c)]
        for u in range(h):
            for v in range(w):
                cam[i, u, v] = max(0.0, float(sum(alpha[k] * g[i, k, u, v] for k in range(c))))
    return cam


@pytest.mark.parametrize("train", [True, False])
def test_grad_cam_matches_brute_force(train):
    net = make_net().train(train)
    images = torch.randn(5, 3, 8, 6, dtype=torch.float64)
    pids = torch.tensor([0, 3, 1, 3, 2])
    g = net.stem(images)
    cam = grad_cam(true_class_score(net.logits(g), pids), g)
    expected = brute_cam(net, g.detach(), pids.tolist())
    assert cam.shape == (5, 4, 3) and not cam.requires_grad
    torch.testing.assert_close(cam.double(), expected, rtol=1e-5, atol=1e-6)  # float32 weighting (documented)
    assert (expected == 0).any() and (expected > 0).any()  # the ReLU is exercised


def test_eval_mode_maps_are_per_image():
    """Without a batch-coupling BN, each image's map is its own Grad-CAM: the batch gives the single-image maps."""
    net = make_net().eval()
    images = torch.randn(4, 3, 8, 6, dtype=torch.float64)
    pids = torch.tensor([2, 0, 1, 2])
    g = net.stem(images)
    cam = grad_cam(true_class_score(net.logits(g), pids), g)
    for i in range(4):
        gi = net.stem(images[i : i + 1])
        torch.testing.assert_close(cam[i : i + 1], grad_cam(true_class_score(net.logits(gi), pids[i : i + 1]), gi))


def test_leaves_grads_buffers_and_modes_alone_and_keeps_the_graph():
    net, ref = make_net(), make_net()
    images = torch.randn(6, 3, 8, 6, dtype=torch.float64)
    pids = torch.tensor([0, 1, 2, 3, 0, 1])
    g = net.stem(images)
    z = net.logits(g)
    buffers = {k: v.clone() for k, v in net.state_dict().items()}
    grad_cam(true_class_score(z, pids), g)
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(v, buffers[k]) for k, v in net.state_dict().items())
    assert all(m.training for m in net.modules())
    z.square().sum().backward()  # the training step's backward still works (graph retained) ...
    ref.logits(ref.stem(images)).square().sum().backward()
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)  # ... and gets exactly the gradients it would have had


def test_true_class_score_and_errors():
    z = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert float(true_class_score(z, torch.tensor([2, 0]))) == 7.0
    with pytest.raises(ValueError, match="pids"):
        true_class_score(z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="not part of a graph"):
        grad_cam(z.sum(), torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        grad_cam(z.sum(), torch.zeros(2, 3, requires_grad=True))
