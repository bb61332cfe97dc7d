"""Heads against their definitions (docs/methods.md §0 BNNeck, §2.1 / §3.1 reduction head), in float64."""

import math

import torch
from torch import nn

from esreid.models.heads import BNNeckHead, HeadOutput, ReductionHead, classifier_logits
from esreid.models.pooling import GAP, GMP


def train_bn(x, eps):
    """Train-mode batch normalisation without affine parameters: per feature over the batch, biased variance."""
    return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps)


def maps(seed=0, b=8, c=6, h=4, w=3):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(b, c, h, w, generator=g, dtype=torch.float64)) * 2 + 0.1


def test_bnneck_head_follows_bot():
    torch.manual_seed(0)
    head = BNNeckHead(GAP(), 512, 300)
    assert torch.all(head.bn.weight == 1) and torch.all(head.bn.bias == 0)
    assert not head.bn.bias.requires_grad and head.classifier.bias is None  # no shift, bias-free classifier
    assert abs(head.classifier.weight.std().item() - 0.001) < 1e-4  # N(0, 0.001)
    head = BNNeckHead(GMP(), 6, 5).double()
    x = maps()
    out = head(x)
    f_t = x.amax(dim=(2, 3))
    torch.testing.assert_close(out.metric, f_t)  # triplet on the pre-BN pooled feature
    torch.testing.assert_close(out.feature, train_bn(f_t, head.bn.eps))  # f_i = BN(f_t), no shift
    torch.testing.assert_close(out.logits, out.feature @ head.classifier.weight.T)  # CE on the post-BN feature
    out.logits.sum().backward()
    assert head.bn.bias.grad is None and head.bn.weight.grad is not None
    head.eval()
    out = head(x)
    assert out.logits is None and out.feature.shape == (8, 6)
    torch.testing.assert_close(classifier_logits(head, out), out.feature @ head.classifier.weight.T)


def test_reduction_head_is_bdbs_conv_bn_relu_on_the_pooled_map():
    """BDB's global branch: GAP -> Conv1x1(C, D) + BatchNorm2d + ReLU on the (B, C, 1, 1) map; the head computes the
    same with Linear + BatchNorm1d on the pooled vector, in train mode (batch statistics) and eval mode."""
    torch.manual_seed(0)
    head = ReductionHead(GAP(), 6, 4, 5, reduction_fan="fan_in").double()
    lin, bn = head.reduction[0], head.reduction[1]
    conv = nn.Conv2d(6, 4, 1).double()
    bn2d = nn.BatchNorm2d(4).double()
    with torch.no_grad():
        conv.weight.copy_(lin.weight[:, :, None, None])
        conv.bias.copy_(lin.bias)
        bn2d.weight.copy_(bn.weight)
        bn2d.bias.copy_(bn.bias)
    x = maps(1)
    for mode in (True, False):
        head.train(mode), bn2d.train(mode)
        ref = torch.relu(bn2d(conv(x.mean(dim=(2, 3), keepdim=True)))).flatten(1)
        out = head(x)
        torch.testing.assert_close(out.feature, ref)
        torch.testing.assert_close(out.metric, ref)  # triplet on g, test feature g
    torch.testing.assert_close(bn.running_mean, bn2d.running_mean)
    head.train()
    out = head(x)
    torch.testing.assert_close(out.logits, out.feature @ head.classifier.weight.T + head.classifier.bias)
    assert isinstance(out, HeadOutput) and head.eval()(x).logits is None


def test_reduction_head_init_follows_bdb():
    """Kaiming-normal with fan_in for the convolution-like reduction, fan_out for Linear layers and the classifier,
    BatchNorm weights N(1, 0.02), zero biases (docs/methods.md §2.1)."""
    torch.manual_seed(0)
    c, d, n = 2048, 512, 700
    conv_like = ReductionHead(GAP(), c, d, n, reduction_fan="fan_in")
    linear = ReductionHead(GMP(), c, d, n)
    assert abs(conv_like.reduction[0].weight.std().item() - math.sqrt(2 / c)) < 0.02 * math.sqrt(2 / c)
    assert abs(linear.reduction[0].weight.std().item() - math.sqrt(2 / d)) < 0.02 * math.sqrt(2 / d)
    assert abs(linear.classifier.weight.std().item() - math.sqrt(2 / n)) < 0.02 * math.sqrt(2 / n)
    bn = linear.reduction[1]
    assert abs(bn.weight.mean().item() - 1) < 0.01 and abs(bn.weight.std().item() - 0.02) < 0.005
    for head in (conv_like, linear):
        for bias in (head.reduction[0].bias, head.reduction[1].bias, head.classifier.bias):
            assert torch.all(bias == 0)
