"""AGW (Table VII): the non-local block and the weighted-regularisation triplet against brute-force float64
definitions, the non-local backbone's layout and ImageNet loading, AGW's loss terms and retrieval feature, and ES-Net*
(ES-Net on the AGW backbone) as a config of ES-Net."""

import math
import os

import pytest
import torch

from esreid.config import LossConfig, load_config
from esreid.engine.schedule import build_optimizer, build_sgd, lr_factor
from esreid.errors import CheckpointError
from esreid.losses import center_loss, cross_entropy, weighted_regularized_triplet
from esreid.models import build_model
from esreid.models.agw import AGWConfig
from esreid.models.backbones import BACKBONES, build_backbone, load_pretrained
from esreid.models.esnet import ESNetConfig
from esreid.models.non_local import NonLocal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_new_non_local_block_is_the_identity():
    block = NonLocal(8, inner=1).train()
    x = torch.randn(3, 8, 4, 2)
    assert torch.equal(block(x), x)


# AGW's code as read (ReID-Survey @38f5912): modeling/backbones/resnet_nl.py builds Non_local(512) x non_layers[1] = 2
# and Non_local(1024) x non_layers[2] = 3; modeling/layer/non_local.py sets inter_channels = reduc_ratio // reduc_ratio
# = 1 and builds g, theta, phi = Conv2d(C, 1, 1) (with bias), W = Conv2d(1, C, 1) + BatchNorm2d(C).
AGW_NON_LOCAL = {"layer2": (512, 2), "layer3": (1024, 3)}
AGW_INTER_CHANNELS = 2 // 2  # Non_local(in_channels, reduc_ratio=2): self.inter_channels = reduc_ratio//reduc_ratio


def agw_non_local_shapes(c):
    k = AGW_INTER_CHANNELS
    return {"g.weight": (k, c, 1, 1), "g.bias": (k,), "theta.weight": (k, c, 1, 1), "theta.bias": (k,),
            "phi.weight": (k, c, 1, 1), "phi.bias": (k,), "W.0.weight": (c, k, 1, 1), "W.0.bias": (c,),
            "W.1.weight": (c,), "W.1.bias": (c,), "W.1.running_mean": (c,), "W.1.running_var": (c,),
            "W.1.num_batches_tracked": ()}


def test_resnet50_nl_non_local_blocks_have_agws_parameter_shapes():
    with torch.device("meta"):
        nl = BACKBONES.get("resnet50_nl")()
    got = {}
    for stage, (c, count) in AGW_NON_LOCAL.items():
        blocks = getattr(nl, stage).non_local
        assert len(blocks) == count
        for name, block in blocks.items():
            got[(stage, name)] = {k: tuple(v.shape) for k, v in block.state_dict().items()}
            assert got[(stage, name)] == agw_non_local_shapes(c), (stage, name)


def test_agw_stem_has_no_relu():
    """AGW's ResNetNL.forward: conv1 -> bn1 -> maxpool (``# x = self.relu(x)    # add missed relu``). A hand-made input
    whose stem convolution is negative everywhere keeps its negative values through the stem."""
    for name in ("resnet50_nl", "resnet_tiny_nl"):
        model = BACKBONES.get(name)().eval()
        with torch.no_grad():
            model.conv1.weight.fill_(1.0 / (3 * 7 * 7))  # each output = the mean of its 3x7x7 window (zero padding)
        stem = model.stages("stem", "stem")
        x = -torch.ones(1, 3, 64, 32)
        with torch.no_grad():
            out = stem(x)
        inner = -1.0 / math.sqrt(1.0 + model.bn1.eps)  # interior: conv = -1, BN at init in eval mode = x / sqrt(1+eps)
        torch.testing.assert_close(out[0, :, 8, 4], torch.full((out.shape[1],), inner))  # a ReLU would give 0
        assert (out < 0).all()


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
    plain.relu = torch.nn.Identity()  # AGW's stem has no ReLU (test_agw_stem_has_no_relu)
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
    model = agw(center_weight=0.0).train()
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
    assert (cfg.center_weight, cfg.center_lr) == (5e-4, 0.5)  # AGW_baseline.yml: CENTER_LOSS on, 0.0005, lr 0.5
    plain = agw(pooling="gap", loss=LossConfig(triplet="batch_hard"), center_weight=0.0).train()
    assert set(plain(*batch())) == {"ce", "triplet"}


# ----------------------------------------------------------------------------------------------------------------
# Centre loss, GeM's p and the schedule as AGW's code trains them
# ----------------------------------------------------------------------------------------------------------------
def _center_brute(f, pids, c):
    """AGW's CenterLoss.forward written out: ||f||² + ||c||² - 2<f, c> per (sample, class), the own class kept by
    the mask, every masked entry clamped to [1e-12, 1e12], summed and divided by the batch size (float64 loops)."""
    total = 0.0
    for i in range(len(pids)):
        for k in range(len(c)):
            d = sum(v * v for v in f[i].tolist()) + sum(v * v for v in c[k].tolist()) - 2 * float(f[i] @ c[k])
            total += min(max(d * (int(pids[i]) == k), 1e-12), 1e12)
    return total / len(pids)


def test_center_loss_matches_agws_formula():
    g = torch.Generator().manual_seed(3)
    f, c = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    pids = torch.tensor([0, 0, 1, 3, 3, 3])
    # AGW adds (N - 1) x 1e-12 by clamping the masked zeros: far below the tolerance
    assert center_loss(f, pids, c).item() == pytest.approx(_center_brute(f, pids, c), rel=1e-9, abs=1e-9)


def test_agw_center_term_and_the_centres_own_sgd_step():
    """tools/train.py: loss = xent + triplet + 5e-4 x center(global_feat); backward; Adam steps the model; the
    centres' grad is multiplied by 1 / 5e-4 and SGD(lr 0.5) steps them: c_k <- c_k - 0.5 · ∂L_center/∂c_k =
    c_k + (1/B) Σ_{i: y_i = k} (f_i - c_k)."""
    model = agw().train()
    images, pids = batch()
    terms = model(images, pids)
    assert set(terms) == {"ce", "triplet", "center"}
    f_t = gem(model.backbone(images), 3.0)  # the pre-BN feature AGW's centre loss sees (global_feat)
    c0 = model.center.centers.detach().clone()
    torch.testing.assert_close(terms["center"], 5e-4 * center_loss(f_t, pids, c0))
    cfg = load_config(None, ["model.name=agw"])
    opt, sgd = build_optimizer(model, cfg.solver), build_sgd(model)
    assert all(p is not model.center.centers for g in opt.param_groups for p in g["params"])  # not in Adam
    (group,) = sgd.param_groups
    assert group["params"][0] is model.center.centers and group["momentum"] == 0 and group["weight_decay"] == 0
    sum(terms.values()).backward()
    sgd.step()
    want = c0.clone()
    for k in range(len(c0)):
        own = pids == k
        want[k] += (f_t.detach()[own] - c0[k]).sum(0) / len(pids)
    torch.testing.assert_close(model.center.centers.detach(), want, rtol=1e-4, atol=1e-5)


def test_gem_p_is_a_free_weight_decayed_parameter():
    """modeling/layer/gem_pool.py: ``self.p = nn.Parameter(torch.ones(1) * norm)`` used as is; get_optimizer puts
    every parameter in a group with WEIGHT_DECAY. Any p > 0 is reachable (p = 0.5 too) and p decays with the rest."""
    model = agw()
    pool = model.head.pool
    with torch.no_grad():
        pool.p.fill_(0.5)
    x = torch.rand(2, 4, 3, 2) + 0.1
    torch.testing.assert_close(pool(x), gem(x, 0.5))
    cfg = load_config(None, ["model.name=agw"])
    opt = build_optimizer(model, cfg.solver)
    (group,) = [g for g in opt.param_groups if any(p is pool.p for p in g["params"])]
    assert group["weight_decay"] == 5e-4 and group["lr"] == cfg.solver.lr
    assert "head.pool.p" not in model.no_weight_decay()


def agw_lr_factor(epoch_1based, milestones=(40, 70), gamma=0.1, warmup_factor=0.01, warmup_iters=10):
    """utils/lr_scheduler.py WarmupMultiStepLR.get_lr with last_epoch = the 1-based epoch (tools/train.py steps it at
    EPOCH_STARTED after the constructor's own step to 0)."""
    e, w = epoch_1based, 1.0
    if e < warmup_iters:
        alpha = e / warmup_iters
        w = warmup_factor * (1 - alpha) + alpha
    return w * gamma ** sum(m <= e for m in milestones)  # bisect_right


def test_agw_yaml_schedule_is_agws_per_epoch_schedule():
    cfg = load_config(os.path.join(ROOT, "configs", "market1501", "agw.yaml")).solver
    ipe = 7
    at = lambda epoch, it: lr_factor(epoch * ipe + it, ipe, cfg.warmup_epochs, cfg.warmup_factor,  # noqa: E731
                                     cfg.milestones, cfg.gamma)
    for epoch in range(cfg.epochs):  # 0-based
        want = agw_lr_factor(epoch + 1)
        if epoch >= cfg.warmup_epochs:
            assert at(epoch, 0) == pytest.approx(want) and at(epoch, ipe - 1) == pytest.approx(want), epoch
        else:  # esreid ramps per iteration: at the end of each epoch it has AGW's value for that epoch
            assert at(epoch, ipe - 1) == pytest.approx(want), epoch


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


def test_trainer_steps_the_centres_with_their_own_sgd(tiny_config):
    """One training step moves the centres by AGW's rule (0.5 x the unweighted gradient), not by Adam."""
    from esreid.engine.trainer import Trainer

    cfg = tiny_config("agw", epochs=1, extra=["model.backbone=resnet_tiny_nl", "test.eval_period=0"])
    trainer = Trainer(cfg, progress=False, log=lambda s: None)
    centres = trainer.model.center.centers
    assert not any(p is centres for g in trainer.optimizer.param_groups for p in g["params"])
    batch = next(iter(trainer.train_loader))
    before = centres.detach().clone()
    trainer.model.train()
    trainer.train_step(batch)
    (grad,) = [p.grad for g in trainer.sgd.param_groups for p in g["params"]]  # of 5e-4 x L_center
    torch.testing.assert_close(centres.detach(), before - 0.5 / 5e-4 * grad)
    assert (centres.detach() - before).abs().max() > 1e-3
