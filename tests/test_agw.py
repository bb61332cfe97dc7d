"""AGW (Table VII): the non-local block and the weighted-regularisation triplet against brute-force float64
definitions, the non-local backbone's layout and ImageNet loading, AGW's loss terms and retrieval feature, and ES-Net*
(ES-Net on the AGW backbone) as a config of ES-Net."""

import math

import pytest
import torch

from esreid.config import LossConfig, load_config
from esreid.errors import CheckpointError
from esreid.losses import cross_entropy, weighted_regularized_triplet
from esreid.models import build_model
from esreid.models.agw import AGWConfig
from esreid.models.backbones import BACKBONES, build_backbone, load_pretrained
from esreid.models.esnet import ESNetConfig
from esreid.models.non_local import NonLocal


# ----------------------------------------------------------------------------------------------------------------
# Non-local block
# ----------------------------------------------------------------------------------------------------------------
def test_non_local_block_matches_a_per_position_loop(randomise_bn):
    torch.manual_seed(0)
    block = NonLocal(6, inner=3).double().eval()
    randomise_bn(block)  # the zero-initialised BN would hide W and everything before it
    x = torch.randn(2, 6, 3, 2, dtype=torch.float64)
    got = block(x)
    conv = lambda c, v: c.weight[:, :, 0, 0] @ v + c.bias  # noqa: E731  (1x1 convolution of one position)
    bn = block.W[1]
    for b in range(2):
        pos = [x[b, :, i, j] for i in range(3) for j in range(2)]  # N = 6 positions
        n = len(pos)
        for k, xi in enumerate(pos):
            y = sum((conv(block.theta, xi) @ conv(block.phi, xj)) / n * conv(block.g, xj) for xj in pos)  # Σ_j f_ij g_j
            wy = conv(block.W[0], y)
            z = (wy - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias + xi
            torch.testing.assert_close(got[b, :, k // 2, k % 2], z)


def test_new_non_local_block_is_the_identity_and_inner_defaults_to_half():
    block = NonLocal(8).train()
    assert block.inner == 4 and block.theta.out_channels == 4
    x = torch.randn(3, 8, 4, 2)
    assert torch.equal(block(x), x)


# ----------------------------------------------------------------------------------------------------------------
# Non-local backbones
# ----------------------------------------------------------------------------------------------------------------
def test_resnet50_nl_keeps_torchvision_keys_and_places_blocks_after_the_last_ones():
    with torch.device("meta"):
        plain, nl = BACKBONES.get("resnet50")(), BACKBONES.get("resnet50_nl")()
    extra = [k for k in nl.state_dict() if k not in plain.state_dict()]
    assert [k for k in plain.state_dict()] == [k for k in nl.state_dict() if k not in extra]  # same order too
    assert {k.split(".non_local.")[0] + "." + k.split(".")[2] for k in extra} == {
        "layer2.2", "layer2.3", "layer3.3", "layer3.4", "layer3.5"}  # last 2 of layer2, last 3 of layer3
    assert nl.not_pretrained == ("layer2.non_local.", "layer3.non_local.")
    assert len(nl.layer2) == 4 and nl.layer2[-1] is nl.layer2._modules["3"]


def test_non_local_runs_right_after_its_block():
    with torch.device("meta"):
        model = BACKBONES.get("resnet50_nl")().eval()
    order = []
    for name, m in model.layer2.named_children():
        if name != "non_local":
            m.register_forward_hook(lambda mod, i, o, n=name: order.append(f"block{n}"))
    for name, m in model.layer2.non_local.items():
        m.register_forward_hook(lambda mod, i, o, n=name: order.append(f"nl{n}"))
    model(torch.empty(1, 3, 64, 32, device="meta"))
    assert order == ["block0", "block1", "block2", "nl2", "block3", "nl3"]


def test_imagenet_weights_load_into_the_plain_part_and_the_output_is_unchanged(tmp_path, randomise_bn):
    torch.manual_seed(0)
    plain = BACKBONES.get("resnet_tiny")()
    randomise_bn(plain)
    torch.save(plain.state_dict(), tmp_path / "imagenet.pth")
    nl = build_backbone("resnet_tiny_nl", pretrained=str(tmp_path / "imagenet.pth"))
    plain.drop_fc()
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(nl.eval()(x), plain.eval()(x))  # new non-local blocks are identities
    bad = {**plain.state_dict(), "layer9.weight": torch.zeros(1)}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="unexpected keys: layer9.weight"):
        load_pretrained(BACKBONES.get("resnet_tiny_nl")(), str(tmp_path / "bad.pth"))


# ----------------------------------------------------------------------------------------------------------------
# Weighted-regularisation triplet
# ----------------------------------------------------------------------------------------------------------------
def _wrt_loop(x, pids):
    terms = []
    for i in range(len(pids)):
        pos = [math.dist(x[i].tolist(), x[j].tolist()) for j in range(len(pids)) if j != i and pids[j] == pids[i]]
        neg = [math.dist(x[i].tolist(), x[j].tolist()) for j in range(len(pids)) if pids[j] != pids[i]]
        if pos and neg:
            fp = sum(d * math.exp(d) for d in pos) / sum(math.exp(d) for d in pos)
            cn = sum(d * math.exp(-d) for d in neg) / sum(math.exp(-d) for d in neg)
            terms.append(math.log1p(math.exp(fp - cn)))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("scale", [0.5, 30.0])  # 30: distances far beyond exp's float32 range
def test_weighted_triplet_matches_loop(seed, scale):
    g = torch.Generator().manual_seed(seed)
    pids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])  # id 3 has no positive: left out
    x = torch.randn(len(pids), 5, generator=g, dtype=torch.float64) * scale
    got = weighted_regularized_triplet(x.float(), pids)
    assert got.item() == pytest.approx(_wrt_loop(x, pids), rel=1e-4, abs=1e-5)
    assert torch.isfinite(got)


def _wrt_autograd(x, pids):
    """The loop of ``_wrt_loop`` in float64 torch ops, so that autograd differentiates the softmax weights too (AGW's
    code: ``softmax_weights`` is built from ``dist_ap`` without ``detach``)."""
    terms = []
    for i in range(len(pids)):
        d = torch.stack([(x[i] - x[j]).pow(2).sum().sqrt() if j != i else x.new_zeros(()) for j in range(len(pids))])
        pos = [j for j in range(len(pids)) if j != i and pids[j] == pids[i]]
        neg = [j for j in range(len(pids)) if pids[j] != pids[i]]
        if pos and neg:
            dp, dn = d[pos], d[neg]
            fp = (dp * dp.exp()).sum() / dp.exp().sum()
            cn = (dn * (-dn).exp()).sum() / (-dn).exp().sum()
            terms.append(torch.nn.functional.softplus(fp - cn))
    return torch.stack(terms).mean()


def test_weighted_triplet_differentiates_its_weights():
    """The gradient equals the float64 autograd of the definition with the weights differentiated; the same loss with
    detached weights has another gradient (so a ``.detach()`` on the weights is caught)."""
    g = torch.Generator().manual_seed(5)
    pids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    x64 = (torch.randn(len(pids), 4, generator=g, dtype=torch.float64) * 0.8).requires_grad_(True)
    _wrt_autograd(x64, pids).backward()
    x = x64.detach().float().requires_grad_(True)
    weighted_regularized_triplet(x, pids).backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    # the detached-weights reading differs by far more than the tolerance above
    xd = x64.detach().clone().requires_grad_(True)
    dist = torch.cdist(xd, xd)
    same = pids[:, None] == pids[None, :]
    pos, neg = same & ~torch.eye(len(pids), dtype=torch.bool), ~same
    w_pos = torch.softmax(dist.masked_fill(~pos, float("-inf")), 1).detach()
    w_neg = torch.softmax((-dist).masked_fill(~neg, float("-inf")), 1).detach()
    torch.nn.functional.softplus((w_pos * dist).sum(1) - (w_neg * dist).sum(1)).mean().backward()
    assert (xd.grad - x64.grad).abs().max() > 1e-2


def test_weighted_triplet_gradient_is_finite_and_flows_to_every_sample():
    x = torch.randn(8, 4, requires_grad=True)
    weighted_regularized_triplet(x, torch.arange(4).repeat_interleave(2)).backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(dim=1) > 0).all()


# ----------------------------------------------------------------------------------------------------------------
# AGW model
# ----------------------------------------------------------------------------------------------------------------
def agw(**kw):
    torch.manual_seed(0)
    return build_model(AGWConfig(backbone="resnet_tiny_nl", **kw), num_classes=4)


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 64, 32, generator=g), torch.arange(4).repeat_interleave(2)


def gem(a, p, eps=1e-6):
    return a.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1 / p)  # AGW's generalised mean


def test_agw_losses_are_ce_ls_on_post_bn_logits_and_weighted_triplet_on_pre_bn(randomise_bn):
    model = agw().train()
    for m in model.backbone.modules():  # every non-local block active (not the identity)
        if isinstance(m, NonLocal):
            randomise_bn(m.W)
    images, pids = batch()
    terms = model(images, pids)
    assert set(terms) == {"ce", "triplet"}
    f_t = gem(model.backbone(images), float(model.head.pool.exponent.detach()))  # GeM, p = 3 at init
    bn = model.head.bn
    f_i = (f_t - f_t.mean(0)) / torch.sqrt(f_t.var(0, unbiased=False) + bn.eps) * bn.weight  # train-mode BNNeck
    torch.testing.assert_close(terms["triplet"], weighted_regularized_triplet(f_t, pids))
    assert not torch.allclose(terms["triplet"], weighted_regularized_triplet(f_i, pids))
    torch.testing.assert_close(terms["ce"], cross_entropy(f_i @ model.head.classifier.weight.T, pids, 0.1))
    sum(terms.values()).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "non_local" in n)


def test_agw_retrieval_is_the_post_bn_feature_without_flip_cosine(randomise_bn):
    model = agw().eval()
    randomise_bn(model)
    images, _ = batch()
    with torch.no_grad():
        (f,) = model(images)
        f_t = gem(model.backbone(images), float(model.head.pool.exponent))
    bn = model.head.bn
    torch.testing.assert_close(f, (f_t - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight)
    rule = model.retrieval
    assert (rule.flip, rule.normalize, rule.metric) == (False, True, "cosine")  # AGW: FEAT_NORM on, no flip


def test_agw_pieces_are_options_of_the_config():
    cfg = load_config(None, ["model.name=agw"]).model
    assert (cfg.backbone, cfg.pooling, cfg.ppool_init) == ("resnet50_nl", "gem", 3.0)
    assert (cfg.loss.triplet, cfg.loss.label_smoothing) == ("weighted", 0.1)
    plain = agw(pooling="gap", loss=LossConfig(triplet="batch_hard")).train()
    assert set(plain(*batch())) == {"ce", "triplet"}


# ----------------------------------------------------------------------------------------------------------------
# ES-Net* (ES-Net on the AGW backbone)
# ----------------------------------------------------------------------------------------------------------------
def test_esnet_star_splits_the_non_local_backbone_by_stages():
    torch.manual_seed(0)
    model = build_model(ESNetConfig(backbone="resnet_tiny_nl", aib_pooling="gem"), num_classes=4).train()
    names = dict(model.named_parameters())
    assert "shared.layer2.non_local.0.theta.weight" in names  # layer2 (and its non-local block) shared
    a, e = names["aib.stages.layer3.non_local.0.theta.weight"], names["esb.stages.layer3.non_local.0.theta.weight"]
    assert torch.equal(a, e) and a.data_ptr() != e.data_ptr()  # each branch owns a copy of layer3's
    terms = model(*batch())
    assert set(terms) == {"aib_ce", "aib_triplet", "esb_ce", "esb_triplet"}
    sum(terms.values()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert set(model.stats()) >= {"aib_p", "esb_l"}  # GeM in the AIB, P-pooling in the ESB
