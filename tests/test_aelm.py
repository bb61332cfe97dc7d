"""AELM reconstruction (docs/methods.md §4, §7 #21): IFCN logits / heatmap against brute force, CoAM against a literal
float64 CBAM, the erase mask on hand-worked maps, loss terms, gradients, eval features without erasing, configs, a tiny
run."""

import glob
import json
import os

import pytest
import torch

from esreid.config import ConfigError, LossConfig, load_config
from esreid.engine.trainer import Trainer
from esreid.losses import batch_hard_triplet, cross_entropy
from esreid.models import MODELS, build_model
from esreid.models import aelm as aelm_module
from esreid.models.aelm import AELMConfig, CoAM, class_heatmap, erase_mask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 64, 32  # layer3 and layer4 maps 4x2 at last stride 1
PIDS = torch.tensor([0, 0, 1, 1, 2, 2])


def make(backbone="resnet_tiny", **kw):
    torch.manual_seed(0)
    return build_model(AELMConfig(**{"backbone": backbone, **kw}), num_classes=3)


def images(b=len(PIDS)):
    torch.manual_seed(1)
    return torch.randn(b, 3, H, W)


def test_registered_with_its_config():
    assert MODELS.get("aelm").__name__ == "AELM" and MODELS.meta("aelm")["config"] is AELMConfig
    assert "RECONSTRUCTION" in aelm_module.__doc__ and "reconstruction" in AELMConfig.__doc__  # labelled as such


def test_ifcn_logits_equal_linear_then_gap_and_heatmap_is_the_gt_class_map():
    head = make().points["layer4"].double().train()
    torch.manual_seed(2)
    x = torch.rand(6, head.head_a.in_channels, 3, 2, dtype=torch.float64)
    out, z_b, erased_mask = head.forward_train(x, PIDS)
    f = head.attention(x)  # F''
    w, b = head.head_a.weight[:, :, 0, 0], head.head_a.bias  # (N, C), (N,)
    torch.testing.assert_close(out.logits, f.mean(dim=(2, 3)) @ w.T + b)  # GAP then Linear (ACoL §3.1)
    # brute force: the score map position by position, then its mean
    s = torch.zeros(6, 3, 3, 2, dtype=torch.float64)
    for i in range(6):
        for u in range(3):
            for v in range(2):
                s[i, :, u, v] = w @ f[i, :, u, v] + b
    torch.testing.assert_close(out.logits, s.mean(dim=(2, 3)))
    cam = s[torch.arange(6), PIDS]  # S^A_y (6, 3, 2)
    lo, hi = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    heat = (cam - lo) / (hi - lo)
    torch.testing.assert_close(class_heatmap(s, PIDS).double(), heat, atol=1e-5, rtol=0)
    erased = (heat >= 0.6).double()
    torch.testing.assert_close(erased_mask.double(), erased)
    assert 0 < erased.sum() < erased.numel()  # something, not everything, is erased
    keep = f * (1 - erased)[:, None]
    wb, bb = head.head_b.weight[:, :, 0, 0], head.head_b.bias
    torch.testing.assert_close(z_b, keep.mean(dim=(2, 3)) @ wb.T + bb)  # head B on F'' ⊙ (1 - E)
    torch.testing.assert_close(out.metric, f.mean(dim=(2, 3)))  # triplet on the pooled CoAM output


def test_coam_equals_a_literal_cbam_in_float64():
    torch.manual_seed(3)
    coam = CoAM(32, 16, 7).double()
    for p in coam.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 32, 5, 4, dtype=torch.float64)
    w1, b1, w2, b2 = coam.mlp[0].weight, coam.mlp[0].bias, coam.mlp[2].weight, coam.mlp[2].bias
    k = coam.spatial.weight[0]  # (2, 7, 7)
    expected = torch.zeros_like(x)
    for i in range(2):
        def mlp(v):
            return w2 @ torch.clamp(w1 @ v + b1, min=0) + b2
        avg = torch.stack([x[i, c].sum() / 20 for c in range(32)])
        mx = torch.stack([x[i, c].max() for c in range(32)])
        m_c = 1 / (1 + torch.exp(-(mlp(avg) + mlp(mx))))  # channel attention
        f1 = x[i] * m_c[:, None, None]
        desc = torch.stack([f1.mean(dim=0), f1.max(dim=0).values])  # [mean_c; max_c] (2, 5, 4)
        for u in range(5):
            for v in range(4):
                acc = torch.zeros((), dtype=torch.float64)
                for ch in range(2):
                    for a in range(7):
                        for bb in range(7):
                            uu, vv = u + a - 3, v + bb - 3
                            if 0 <= uu < 5 and 0 <= vv < 4:  # zero padding
                                acc = acc + k[ch, a, bb] * desc[ch, uu, vv]
                expected[i, :, u, v] = f1[:, u, v] / (1 + torch.exp(-acc))
    torch.testing.assert_close(coam(x), expected)


def test_erase_mask_on_hand_worked_maps():
    s = torch.zeros(2, 3, 2, 3)
    s[0, 1] = torch.tensor([[-1.0, 0.0, 4.0], [9.0, 6.0, 7.0]])  # normalised: [[0, .1, .5], [1, .7, .8]]
    s[1, 2] = torch.tensor([[5.0, 5.0, 5.0], [5.0, 5.0, 5.0]])  # flat map: nothing to erase
    s[0, 0] = 100.0  # other classes' maps are ignored
    heat = class_heatmap(s, torch.tensor([1, 2]))
    torch.testing.assert_close(heat[0], torch.tensor([[0.0, 0.1, 0.5], [1.0, 0.7, 0.8]]), atol=1e-6, rtol=0)
    assert erase_mask(heat, 0.6).tolist() == [[[0, 0, 0], [1, 1, 1]], [[0, 0, 0], [0, 0, 0]]]
    assert erase_mask(heat, 0.45)[0].tolist() == [[0, 0, 1], [1, 1, 1]]
    assert erase_mask(heat, 0.95)[0].tolist() == [[0, 0, 0], [1, 0, 0]]  # the maximum is always erased
    # min-max normalisation: an affine change of the map (positive scale) erases the same locations
    torch.testing.assert_close(class_heatmap(3 * s - 7, torch.tensor([1, 2])), heat, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backbone", ["resnet_tiny", "resnet_tiny_bottleneck"])
def test_loss_terms_and_every_parameter_gets_a_gradient(backbone):
    model = make(backbone).train()
    terms = model(images(), PIDS)
    assert set(terms) == {f"{p}_{t}" for p in ("layer3", "layer4") for t in ("ce", "triplet", "erased_ce")}
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_losses_equal_a_step_by_step_recomputation():
    loss = LossConfig(ce_weight=0.7, label_smoothing=0.1, triplet_weight=2.0, triplet_margin=0.3)
    model = make(loss=loss).double().train()
    x = images().double()
    terms = model(x, PIDS)
    trunk = model.trunk
    t = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
    t3 = trunk.layer3(trunk.layer2(trunk.layer1(t)))
    t4 = trunk.layer4(t3)  # the raw layer3 map continues into layer4 (no attention, no erasing)
    for p, m in (("layer3", t3), ("layer4", t4)):
        head = model.points[p]
        f = head.attention(m)
        s_a = head.head_a(f)
        heat = class_heatmap(s_a, PIDS)
        e = (heat >= 0.6).double()
        z_b = head.head_b(f * (1 - e)[:, None]).mean(dim=(2, 3))
        torch.testing.assert_close(terms[f"{p}_ce"], 0.7 * cross_entropy(s_a.mean(dim=(2, 3)), PIDS, 0.1))
        torch.testing.assert_close(terms[f"{p}_erased_ce"], 0.7 * cross_entropy(z_b, PIDS, 0.1))
        torch.testing.assert_close(terms[f"{p}_triplet"], 2.0 * batch_hard_triplet(f.mean(dim=(2, 3)), PIDS, 0.3))


def test_erase_mask_is_constant():
    model = make().train()
    seen = []
    model.points["layer4"].head_b.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    _, _, erased = model.points["layer4"].forward_train(torch.rand(6, 128, 4, 2, requires_grad=True), PIDS)
    assert not erased.requires_grad
    assert ((seen[0] == 0).all(dim=1) == erased.bool()).all()  # erased positions are zero in every channel


def test_eval_features_shapes_no_erasing_and_batch_of_one():
    model = make().train()
    model(images(), PIDS)  # one step of BN running statistics
    model.eval()
    calls = []
    for head in model.points.values():
        for conv in (head.head_a, head.head_b):
            conv.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        f3, f4 = model(images())
        single = model(images()[:1])
        t3 = model.trunk[:-1](images())  # stem .. layer3
        expected = model.points["layer3"].bn(model.points["layer3"].attention(t3).mean(dim=(2, 3)))
    assert calls == []  # neither IFCN head runs at eval: no heatmap, no erasing
    assert f3.shape == (len(PIDS), 64) and f4.shape == (len(PIDS), 128)
    assert [f.shape for f in single] == [(1, 64), (1, 128)]
    torch.testing.assert_close(f3, expected)  # BN(GAP(CoAM(layer3 map))) with running statistics
    torch.testing.assert_close(single[0], f3[:1], atol=1e-5, rtol=1e-5)


def test_one_insertion_point_drops_the_unused_stage():
    model = make(insertion_points=["layer3"]).train()
    assert not hasattr(model.trunk, "layer4") and list(model.points) == ["layer3"]
    assert model.saliency_layer == "trunk.layer3"
    terms = model(images(), PIDS)
    assert set(terms) == {"layer3_ce", "layer3_triplet", "layer3_erased_ce"}
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert [f.shape for f in model(images())] == [(len(PIDS), 64)]


@pytest.mark.parametrize("override, message", [
    ("model.insertion_points=[]", "key 'model.insertion_points': expected a non-empty list"),
    ("model.insertion_points=[layer4, layer3]", "key 'model.insertion_points': expected distinct stages in trunk "
                                                "order, got ['layer4', 'layer3']"),
    ("model.insertion_points=[layer5]", "key 'model.insertion_points': item 0 ('layer5'): expected one of layer1, "
                                        "layer2, layer3, layer4; got 'layer5'"),
    ("model.erase_threshold=1.0", "key 'model.erase_threshold': expected a value < 1, got 1.0"),
    ("model.attention_reduction=0", "key 'model.attention_reduction': expected a value >= 1, got 0"),
    ("model.spatial_kernel=4", "key 'model.spatial_kernel': expected an odd size (same-size map), got 4"),
])
def test_bad_settings_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.name=aelm", override])
    assert message in str(e.value)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*", "aelm.yaml"))))
def test_configs_build(path):
    cfg = load_config(path, ["model.backbone=resnet_tiny", "model.pretrained="])
    assert cfg.model.name == "aelm" and cfg.model.insertion_points == ["layer3", "layer4"]
    assert (cfg.model.erase_threshold, cfg.model.attention_reduction, cfg.model.spatial_kernel) == (0.6, 16, 7)
    assert (cfg.solver.optimizer, cfg.solver.lr, cfg.solver.epochs, cfg.data.height) == ("adam", 3.5e-4, 120, 384)
    assert isinstance(build_model(cfg.model, 5), MODELS.get("aelm"))


def test_three_configs_exist():
    assert {os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(ROOT, "configs", "*", "aelm.yaml"))
            } == {"market1501", "dukemtmcreid", "cuhk03"}


def test_trainer_runs_one_epoch(tmp_path, tiny_config):
    cfg = tiny_config("aelm", epochs=1, extra=["data.height=64", "data.width=32"])
    metrics = Trainer(cfg, progress=False, log=lambda s: None).train()
    assert 0.0 <= metrics["mAP"] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert train and all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
