"""ES-Net Table V ablations as configs of existing models: Base+Random Erasing (baseline + TrainAugment's random
erasing), Base+Grad-CAM Erasing (ES-Net with ``saliency: gradcam``), Base+Feature Dropping Branch (BDB with
``global_head: bnneck``). The Grad-CAM path is checked against a closed form, BESM against the map, the BDB option's
losses and features against a step-by-step recomputation, and every config against the values it states."""

import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

from esreid.config import LossConfig, load_config
from esreid.data.transforms import TrainAugment
from esreid.erasing.besm import erase_count
from esreid.erasing.gradcam import grad_cam, true_class_score
from esreid.losses import batch_hard_triplet, cross_entropy
from esreid.models import MODELS, build_model
from esreid.models.bdb import BDBConfig
from esreid.models.esnet import ESNetConfig
from esreid.models.heads import BNNeckHead

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 64, 32  # resnet_tiny: a 4x2 layer4 map at last stride 1
PIDS = torch.tensor([0, 0, 1, 1, 2, 2])
CE_ONLY = LossConfig(triplet_weight=0.0)


def images():
    torch.manual_seed(1)
    return torch.randn(len(PIDS), 3, H, W) + 3.0  # no natural zeros


# ----------------------------------------------------------------------------------------------------------------
# Base + Grad-CAM Erasing
# ----------------------------------------------------------------------------------------------------------------
def gradcam_esnet(**kw):
    torch.manual_seed(0)
    cfg = ESNetConfig(backbone="resnet_tiny", esb_pooling="gap", saliency="gradcam", loss=CE_ONLY, **kw)
    model = build_model(cfg, num_classes=3)
    bn, cls = model.esb.head.bn, model.esb.head.classifier
    with torch.no_grad():  # non-trivial running statistics and weights: the closed form must use all of them
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        cls.weight.normal_()
    return model.train()


def esb_map_input(model, x):
    """The ESB's res_conv5 output A (B, C, h, w) in eval mode, and the (t, a_aib) the training step would pass."""
    was = model.training
    model.eval()
    with torch.no_grad():
        t = model.shared(x)
        a = model.esb.stages(t)
        reuse = (t, model.aib.stages(t)) if model.aib is not None else (None, None)
    model.train(was)
    return a, reuse


@pytest.mark.parametrize("shared_until, aib", [("layer2", False), ("layer4", True)])
def test_gradcam_saliency_equals_closed_form_and_grad_cam(shared_until, aib):
    model = gradcam_esnet(shared_until=shared_until, aib=aib)
    x = images()
    a, (t, a_aib) = esb_map_input(model, x)
    got = model.saliency(x, PIDS, t, a_aib)
    # Closed form in float64 for GAP -> BN (running stats) -> bias-free Linear: d z_{i,y_i} / d A_{i,k,u,v} =
    # W[y_i, k] * gamma_k / sqrt(var_k + eps) / (h*w) for every (u, v), which is alpha_{i,k} itself.
    bn, cls = model.esb.head.bn, model.esb.head.classifier
    a64 = a.double()
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).double()  # (C,)
    alpha = cls.weight.double()[PIDS] * scale / (a.shape[2] * a.shape[3])  # (B, C)
    expected = torch.relu((alpha[:, :, None, None] * a64).sum(dim=1))
    assert got.shape == (len(PIDS), H // 16, W // 16) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)
    assert (got > 0).any() and (got == 0).any()  # the ReLU is active somewhere, and not everywhere
    # the library Grad-CAM on the same A through the same (eval-mode) head
    leaf = a.clone().requires_grad_(True)
    model.esb.eval()
    logits = model.esb.head.classifier(model.esb.head(leaf).feature)
    torch.testing.assert_close(got, grad_cam(true_class_score(logits, PIDS), leaf))
    model.cfg.saliency = "cgram"  # the field is what selects the map: CG-RAM differs on the same model
    assert not torch.allclose(model.saliency(x, PIDS, t, a_aib), got)


@pytest.mark.parametrize("shared_until, aib", [("layer2", False), ("layer4", True)])
def test_gradcam_saliency_changes_nothing(shared_until, aib):
    model = gradcam_esnet(shared_until=shared_until, aib=aib)
    x = images()
    _, (t, a_aib) = esb_map_input(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.saliency(x, PIDS, t, a_aib)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN buffers untouched
    assert all(p.grad is None for p in model.parameters())  # autograd.grad to A only
    assert all(m.training for m in model.modules())  # train mode restored everywhere


def test_gradcam_head_is_float32_under_bf16_autocast():
    model = gradcam_esnet(shared_until="layer4")  # A = the given layer4 output, as the AIB pass makes it
    x = images()
    _, (t, a_aib) = esb_map_input(model, x)
    a16 = a_aib.bfloat16()
    ref = model.saliency(x, PIDS, t, a16.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.saliency(x, PIDS, t, a16)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


def test_besm_erases_the_top_of_the_gradcam_map():
    model = gradcam_esnet(aib=False, erase_ratio=0.25, erase_prob=1.0)  # the Base+Grad-CAM Erasing model
    x = images()
    maps = model.saliency(x, PIDS)  # deterministic and changes nothing (above): the map the step will use
    inputs = []
    model.shared.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    terms = model(x, PIDS)
    assert set(terms) == {"esb_ce"}
    erased = inputs[-1]  # the ESB pass runs on I*
    mask = (erased == model.erase_fill[:, None, None]).all(dim=1)  # (B, H, W)
    assert torch.equal(erased[~mask[:, None].expand_as(x)], x[~mask[:, None].expand_as(x)])
    up = F.interpolate(maps[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]  # M*, Algorithm 1
    for i in range(len(PIDS)):
        assert mask[i].sum() == erase_count(0.25, H, W)
        assert up[i][mask[i]].min() >= up[i][~mask[i]].max()  # the erased pixels are the top of the Grad-CAM map


# ----------------------------------------------------------------------------------------------------------------
# Base + Feature Dropping Branch
# ----------------------------------------------------------------------------------------------------------------
def bnneck_bdb(loss=CE_ONLY):
    torch.manual_seed(0)
    cfg = BDBConfig(backbone="resnet_tiny", global_head="bnneck", drop_dim=20, loss=loss)
    return build_model(cfg, num_classes=3)


def test_bnneck_global_head_losses_equal_a_step_by_step_recomputation():
    model = bnneck_bdb(LossConfig(label_smoothing=0.1, triplet_weight=1.0)).double().train()
    assert isinstance(model.global_head, BNNeckHead) and model.global_head.bn.num_features == 128
    x = images().double()
    state = model.dropblock.generator.get_state()
    terms = model(x, PIDS)
    model.dropblock.generator.set_state(state)
    t = model.backbone(x)
    f_t = t.mean(dim=(2, 3))  # GAP, (B, C)
    bn = model.global_head.bn
    f_i = (f_t - f_t.mean(0)) / torch.sqrt(f_t.var(0, unbiased=False) + bn.eps) * bn.weight  # train-mode BN, bias 0
    top, left, rh, rw = model.dropblock.region(t.shape[2], t.shape[3])
    m = model.drop_bottleneck(t).clone()
    m[:, :, top : top + rh, left : left + rw] = 0
    lin, bn1d = model.drop_head.reduction[:2]
    d = F.relu(bn1d(m.amax(dim=(2, 3)) @ lin.weight.T + lin.bias))
    expected = {
        "global_ce": cross_entropy(f_i @ model.global_head.classifier.weight.T, PIDS, 0.1),  # CE on post-BN
        "global_triplet": batch_hard_triplet(f_t, PIDS, 0.3, False),  # triplet on pre-BN f_t (BoT)
        "drop_ce": cross_entropy(model.drop_head.classifier(d), PIDS, 0.1),
        "drop_triplet": batch_hard_triplet(d, PIDS, 0.3, False),
    }
    assert set(terms) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value, msg=key)


def test_bnneck_global_head_ce_only_terms_gradients_and_eval_features():
    model = bnneck_bdb().train()
    terms = model(images(), PIDS)
    assert set(terms) == {"global_ce", "drop_ce"}  # Base: CE only (triplet_weight 0 drops both triplet terms)
    sum(terms.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [] and not model.global_head.bn.bias.requires_grad  # BNNeck: no shift
    assert model.global_head.classifier.weight.std() < 0.01  # BoT's init (std 0.001), not BDB's kaiming
    model.eval()
    with torch.no_grad():
        f_i, d = model(images())
        single = model(images()[:1])
        gap = model.backbone(images()).mean(dim=(2, 3))
    bn = model.global_head.bn
    torch.testing.assert_close(f_i, (gap - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight)
    assert f_i.shape == (len(PIDS), 128) and d.shape == (len(PIDS), 20) and (d >= 0).all()
    assert [f.shape for f in single] == [(1, 128), (1, 20)]


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------
CONFIGS = ("base_besm", "base_random_erasing", "base_gradcam_erasing", "base_feature_dropping")  # Table V rows


def config(dataset, name):
    return load_config(os.path.join(ROOT, "configs", dataset, f"{name}.yaml"), ["model.pretrained="])


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_load_build_and_msmt17_differs_only_in_data(name):
    market, msmt = config("market1501", name), config("msmt17", name)
    assert isinstance(build_model(market.model, 5), MODELS.get(market.model.name))  # ResNet-50, random init
    m, s = dataclasses.asdict(market), dataclasses.asdict(msmt)
    assert (m["data"].pop("name"), s["data"].pop("name")) == ("market1501", "msmt17")
    assert (m.pop("output_dir"), s.pop("output_dir")) == (f"outputs/market1501/{name}", f"outputs/msmt17/{name}")
    assert m == s
    # every Table V row: CE only, no label smoothing, the ES-Net person recipe
    assert market.model.loss.triplet_weight == 0 and market.model.loss.label_smoothing == 0
    assert (market.model.backbone, market.model.last_stride) == ("resnet50", 1)
    d, sol = market.data, market.solver
    assert (d.height, d.width, d.ids_per_batch, d.instances, d.pad, d.cutout_prob) == (384, 128, 16, 4, 0, 0.0)
    assert (sol.optimizer, sol.lr, sol.epochs, sol.warmup_epochs, sol.milestones) == ("adam", 3.5e-4, 120, 10, [40, 70])
    rule = build_model(market.model, 5, market.test).retrieval
    assert (rule.flip, rule.normalize, rule.metric) == (True, True, "cosine")


def test_random_erasing_config_erases_with_the_spec_parameters():
    cfg = config("market1501", "base_random_erasing")
    assert (cfg.model.name, cfg.model.pooling, cfg.data.random_erasing) == ("baseline", "gap", 0.5)
    assert TrainAugment.ERASE_AREA == (0.02, 0.4)  # docs/methods.md §1.8: area 0.02-0.4, aspect 0.3-3.33
    assert TrainAugment.ERASE_ASPECT == pytest.approx((0.3, 3.33), abs=0.01)
    torch.manual_seed(0)
    batch = torch.randint(0, 256, (16, 3, H, W), dtype=torch.uint8)
    erased = (TrainAugment(cfg.data, seed=0)(batch) == 0).all(dim=1).flatten(1).any(dim=1)  # 0 = erased pixel
    assert 0 < erased.sum() < 16  # p=0.5 per image


def test_gradcam_and_feature_dropping_configs_select_the_new_options():
    g = config("market1501", "base_gradcam_erasing").model
    assert (g.name, g.saliency, g.aib, g.esb_pooling, g.erase_ratio, g.erase_prob) == (
        "esnet", "gradcam", False, "gap", 0.1, 0.3)
    f = config("market1501", "base_feature_dropping").model
    assert (f.name, f.global_head, f.drop_height_ratio, f.drop_width_ratio, f.drop_dim) == (
        "bdb", "bnneck", 0.33, 1.0, 1024)
