"""Which tensor feeds what, pinned with non-trivial BatchNorm statistics (a fresh BNNeck is the identity in eval mode,
so pre-BN and post-BN tensors would be interchangeable): ES-Net's loss terms of eq. 1 (CE on the post-BN logits,
triplet on the pre-BN f_t, docs/methods.md §0, §1.6), its retrieval feature (post-BN f_i of both branches, §1.7) and
the confidence its training-time CG-RAM differentiates (cosine of the ESB's post-BN f_i, eq. 5, §7 #3); the BoT
baseline's retrieval feature likewise. Every expected value is computed here from the definitions, step by step."""

import pytest
import torch
import torch.nn.functional as F

from esreid.losses import batch_hard_triplet, cross_entropy
from esreid.models import build_model
from esreid.models.baseline import BaselineConfig
from esreid.models.esnet import ESNetConfig
from esreid.models.pooling import lehmer_pool

H, W = 64, 32
PIDS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])


def images(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(PIDS), 3, H, W, generator=g)


def esnet(randomise_bn, **kw):
    torch.manual_seed(0)
    model = build_model(ESNetConfig(backbone="resnet_tiny", **kw), num_classes=3)
    with torch.no_grad():  # classifiers of std 0.001 give CE ~ ln N whatever they read
        for head in model.heads().values():
            head.classifier.weight.normal_(0, 0.1)
    return randomise_bn(model)


def bn_eval(bn, f):
    """BatchNorm1d in eval mode, by its definition."""
    return (f - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def bn_train(bn, f):
    """BatchNorm1d in train mode (batch statistics, biased variance), by its definition."""
    return (f - f.mean(0)) / torch.sqrt(f.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias


def pooled(model, branch, t):
    """f_t of ``branch`` from the shared-trunk output ``t``: GAP (AIB) or P-pooling of order l (ESB, eq. 6)."""
    b = getattr(model, branch)
    a = b.stages(t)
    if branch == "esb" and model.cfg.esb_pooling == "ppool":
        return lehmer_pool(a, b.head.pool.exponent)
    return a.mean(dim=(2, 3))


# ----------------------------------------------------------------------------------------------------------------
# Loss terms (eq. 1)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shared_until", ["layer2", "layer4"])
def test_esnet_losses_read_pre_bn_for_the_triplet_and_post_bn_logits_for_ce(randomise_bn, shared_until):
    model = esnet(randomise_bn, shared_until=shared_until, erase_prob=1.0).train()
    inputs = []
    model.shared.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    x = images()
    terms = model(x, PIDS)
    erased = inputs[1]  # I*, what the ESB trained on
    assert not torch.equal(erased, x)
    expected, wrong = {}, {}
    for branch, source in (("aib", x), ("esb", erased)):
        head = getattr(model, branch).head
        f_t = pooled(model, branch, model.shared(source))  # train mode: the same batch statistics as the step
        f_i = bn_train(head.bn, f_t)
        expected[f"{branch}_ce"] = cross_entropy(f_i @ head.classifier.weight.T, PIDS)
        expected[f"{branch}_triplet"] = batch_hard_triplet(f_t, PIDS, 0.3)  # pre-BN (BoT, docs/methods.md §0)
        wrong[f"{branch}_triplet"] = batch_hard_triplet(f_i, PIDS, 0.3)
        wrong[f"{branch}_ce"] = cross_entropy(f_t @ head.classifier.weight.T, PIDS)
    assert set(terms) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value, msg=key)
        assert not torch.allclose(value, wrong[key], rtol=1e-3), key  # the test tells the two tensors apart


# ----------------------------------------------------------------------------------------------------------------
# Retrieval feature (§1.7)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shared_until", ["layer2", "layer4"])
def test_esnet_retrieval_feature_is_post_bn_of_both_branches(randomise_bn, shared_until):
    model = esnet(randomise_bn, shared_until=shared_until).eval()
    x = images()

    def branch_features(imgs):
        t = model.shared(imgs)
        return [bn_eval(getattr(model, b).head.bn, pooled(model, b, t)) for b in ("aib", "esb")]

    with torch.no_grad():
        feats = model(x)
        expected = branch_features(x)
        for got, want in zip(feats, expected):
            torch.testing.assert_close(got, want)
        pre = [pooled(model, b, model.shared(x)) for b in ("aib", "esb")]
        for got, p in zip(feats, pre):  # pre-BN would rank differently: the cosines differ
            assert not torch.allclose(F.normalize(got, dim=1) @ F.normalize(got, dim=1).T,
                                      F.normalize(p, dim=1) @ F.normalize(p, dim=1).T, atol=1e-3)
        mirrored = branch_features(torch.flip(x, dims=[3]))
        ranked = torch.cat([F.normalize(a + b, dim=1) for a, b in zip(expected, mirrored)], dim=1)  # flip, L2, cat
        torch.testing.assert_close(model.retrieval_features(x), ranked)


def test_baseline_retrieval_feature_is_post_bn(randomise_bn):
    torch.manual_seed(0)
    model = randomise_bn(build_model(BaselineConfig(backbone="resnet_tiny"), num_classes=3)).eval()
    x = images()
    with torch.no_grad():
        (f,) = model(x)
        f_t = model.backbone(x).mean(dim=(2, 3))
    torch.testing.assert_close(f, bn_eval(model.head.bn, f_t))


# ----------------------------------------------------------------------------------------------------------------
# Training-time CG-RAM confidence (eq. 5 on the ESB's post-BN f_i)
# ----------------------------------------------------------------------------------------------------------------
def cgram_by_definition(model, a):
    """Eqs. 2-5 on the ESB's layer4 output ``a`` (B, C, h, w): f = post-BN (eval) feature of the ESB, the easiest
    positive = the other same-identity sample with the largest cosine, S = Σ exp(cos)·cos, M = ReLU(Σ_k dS/dA^k A^k)."""
    a = a.detach().double().requires_grad_(True)
    head = model.esb.head
    bn = head.bn
    f_t = lehmer_pool(a, head.pool.exponent.detach().double())
    f = (f_t - bn.running_mean.double()) / torch.sqrt(bn.running_var.double() + bn.eps) * bn.weight.double()
    s = 0
    for i in range(len(PIDS)):
        cands = [j for j in range(len(PIDS)) if j != i and PIDS[j] == PIDS[i]]
        cos = [F.cosine_similarity(f[i], f[j], dim=0) for j in cands]
        c = max(cos, key=lambda v: float(v.detach()))  # eq. 2 with the easiest positive
        s = s + torch.exp(c) * c  # eq. 5
    (grad,) = torch.autograd.grad(s, a)  # eq. 3
    return torch.relu((grad * a).sum(dim=1)).float()  # eq. 4


@pytest.mark.parametrize("shared_until", ["layer2", "layer4"])
def test_training_cgram_differentiates_the_cosine_of_the_esb_post_bn_feature(randomise_bn, shared_until):
    model = esnet(randomise_bn, shared_until=shared_until).train()
    x = images()
    with torch.no_grad():
        t = model.shared(x)  # the AIB pass's trunk output (train mode)
        a_aib = model.aib.stages(t)
        model.esb.eval()
        a = model.esb.stages(t) if shared_until == "layer2" else a_aib  # the ESB's res_conv5 output, eval-mode BN
        model.esb.train()
    got = model.saliency(x, PIDS, t, a_aib)
    torch.testing.assert_close(got, cgram_by_definition(model, a), rtol=1e-4, atol=1e-6)
    # the same maps from the pre-BN feature differ: the test would see a model using f_t
    bn = model.esb.head.bn
    with torch.no_grad():
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        bn.weight.fill_(1.0)
    assert not torch.allclose(got, cgram_by_definition(model, a), rtol=1e-2, atol=1e-4)
