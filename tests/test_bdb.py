"""BDB model (docs/methods.md §2): loss terms against a step-by-step recomputation, gradients everywhere, eval features,
initialisation, the drop branch's Batch DropBlock, configs, and `esreid train` on the synthetic dataset."""

import glob
import json
import os

import pytest
import torch
import torch.nn.functional as F

from esreid.cli import main
from esreid.config import ConfigError, LossConfig, load_config
from esreid.losses import batch_hard_triplet, cross_entropy
from esreid.models import MODELS, build_model
from esreid.models.bdb import BDBConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 64, 32  # layer4 map 4x2 at last stride 1
PIDS = torch.tensor([0, 0, 1, 1, 2, 2])
LOSS = LossConfig(label_smoothing=0.1, soft_margin=True)


def make(backbone="resnet_tiny", **kw):
    torch.manual_seed(0)
    cfg = BDBConfig(**{"backbone": backbone, "global_dim": 12, "drop_dim": 20, "loss": LOSS, **kw})
    return build_model(cfg, num_classes=3)


def images(b=len(PIDS)):
    torch.manual_seed(1)
    return torch.randn(b, 3, H, W)


def test_registered_with_its_config():
    assert MODELS.get("bdb").__name__ == "BDB" and MODELS.meta("bdb")["config"] is BDBConfig


@pytest.mark.parametrize("backbone", ["resnet_tiny", "resnet_tiny_bottleneck"])
def test_loss_terms_and_every_parameter_gets_a_gradient(backbone):
    model = make(backbone).train()
    c = model.backbone.out_channels
    assert model.drop_bottleneck.conv1.in_channels == c and model.drop_bottleneck.conv1.out_channels == c // 4
    terms = model(images(), PIDS)
    assert set(terms) == {"global_ce", "global_triplet", "drop_ce", "drop_triplet"}  # docs/methods.md §2.3
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_losses_equal_a_step_by_step_recomputation():
    model = make().double().train()
    x = images().double()
    state = model.dropblock.generator.get_state()
    terms = model(x, PIDS)
    # the same step by hand, replaying the DropBlock region (BN in train mode uses batch statistics either way)
    model.dropblock.generator.set_state(state)
    t = model.backbone(x)
    lin, bn = model.global_head.reduction[:2]
    g = F.relu(bn(t.mean(dim=(2, 3)) @ lin.weight.T + lin.bias))  # GAP -> 1x1 reduction + BN + ReLU
    top, left, rh, rw = model.dropblock.region(t.shape[2], t.shape[3])
    m = model.drop_bottleneck(t).clone()
    m[:, :, top : top + rh, left : left + rw] = 0  # Batch DropBlock
    lin, bn = model.drop_head.reduction[:2]
    d = F.relu(bn(m.amax(dim=(2, 3)) @ lin.weight.T + lin.bias))  # GMP -> Linear + BN1d + ReLU
    expected = {
        "global_ce": cross_entropy(model.global_head.classifier(g), PIDS, 0.1),
        "global_triplet": batch_hard_triplet(g, PIDS, 0.3, True),
        "drop_ce": cross_entropy(model.drop_head.classifier(d), PIDS, 0.1),
        "drop_triplet": batch_hard_triplet(d, PIDS, 0.3, True),
    }
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value, msg=key)


def test_drop_branch_zeroes_one_band_in_training_only():
    model = make().train()
    seen = []
    model.dropblock.register_forward_hook(lambda mod, inp, out: seen.append(out))
    model(images(), PIDS)
    rows = (seen[-1] == 0).all(dim=(0, 1, 3))  # (h,): rows zero for every image, channel and column
    assert rows.sum() == round(0.33 * (H // 16))
    model.eval()
    model(images())
    assert not (seen[-1] == 0).all(dim=(0, 1, 3)).any()


def test_eval_features_shapes_post_relu_and_batch_of_one():
    model = make().eval()
    with torch.no_grad():
        g, d = model(images())
        single = model(images()[:1])
    assert g.shape == (len(PIDS), 12) and d.shape == (len(PIDS), 20)
    assert (g >= 0).all() and (d >= 0).all()  # post-ReLU test features (docs/methods.md §2.1)
    assert [f.shape for f in single] == [(1, 12), (1, 20)]  # flatten(1), not squeeze (docs/methods.md §2.1 pitfall)
    with torch.no_grad():
        again = model(images())
    assert torch.equal(again[0], g) and torch.equal(again[1], d)  # no DropBlock at eval


def test_initialisation_follows_bdb():
    model = make(global_dim=200, drop_dim=300)
    bns = [model.global_head.reduction[1], model.drop_head.reduction[1]]
    for bn in bns:  # N(1, 0.02) weights, zero biases
        assert abs(bn.weight.mean() - 1) < 0.01 and 0.01 < bn.weight.std() < 0.03 and (bn.bias == 0).all()
    conv, lin = model.global_head.reduction[0], model.drop_head.reduction[0]
    # kaiming-normal: std sqrt(2 / fan_in) for the 1x1 conv (its input channels), sqrt(2 / fan_out) for the Linear
    # layers; zero biases
    assert conv.weight.std().item() == pytest.approx((2 / conv.in_features) ** 0.5, rel=0.1)
    assert lin.weight.std().item() == pytest.approx((2 / lin.out_features) ** 0.5, rel=0.1)
    for layer in (conv, lin, model.global_head.classifier, model.drop_head.classifier):
        assert (layer.bias == 0).all()
    torch.manual_seed(0)
    cls = make(global_dim=400).global_head.classifier  # 3 rows: fan_out = 3
    assert cls.weight.std().item() == pytest.approx((2 / 3) ** 0.5, rel=0.15)


@pytest.mark.parametrize("overrides, message", [
    (["model.drop_dim=0"], "key 'model.drop_dim': expected a value >= 1, got 0"),
    (["model.drop_height_ratio=1.5"], "key 'model.drop_height_ratio': expected a value <= 1, got 1.5"),
    (["model.global_head=gem"], "key 'model.global_head': expected one of reduction, bnneck; got 'gem'"),
    (["model.drop_height_ratio=0.1"], "key 'model.drop_height_ratio': the dropped block would be 0x2 cells of the "
                                      "4x2 layer4 map of 64x32 images"),
    (["model.backbone=resnet_tiny", "model.name=bdb"], None),
])
def test_bad_settings_name_the_key(overrides, message):
    base = ["model.name=bdb", "model.backbone=resnet_tiny", "data.height=64", "data.width=32"]
    if message is None:
        load_config(None, base + overrides)
        return
    with pytest.raises(ConfigError) as e:
        load_config(None, base + overrides)
    assert message in str(e.value)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*", "bdb.yaml"))))
def test_configs_build(path):
    cfg = load_config(path, ["model.backbone=resnet_tiny", "model.pretrained="])
    assert cfg.model.name == "bdb" and cfg.model.loss.soft_margin and cfg.model.loss.label_smoothing == 0.1
    rule = build_model(cfg.model, 5, cfg.test).retrieval  # BDB's own rule (docs/methods.md §2.1)
    assert (rule.flip, rule.normalize, rule.metric) == (False, False, "euclidean")
    assert (cfg.data.cutout_prob, cfg.data.cutout_size, cfg.data.height) == (0.5, 64, 384)
    assert isinstance(build_model(cfg.model, 5), MODELS.get("bdb"))


def test_esreid_train_runs_one_epoch_of_the_market_config(tmp_path):
    args = '{"num_train_ids": 8, "num_test_ids": 4, "images_per_id": 4, "height": 64, "width": 32}'
    out = tmp_path / "run"
    argv = ["train", "--config", os.path.join(ROOT, "configs", "market1501", "bdb.yaml"), "data.name=synthetic",
            f"data.root={tmp_path / 'data'}", f"data.args={args}", "data.height=64", "data.width=32",
            "data.cutout_size=16", "data.ids_per_batch=4", "data.instances=2", "data.workers=0",
            "model.backbone=resnet_tiny", "model.pretrained=", "solver.epochs=1", "solver.warmup_epochs=1",
            "solver.milestones=[1]", "test.eval_period=1", "device=cpu", "log_period=1", f"output_dir={out}"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["mAP"] <= 1.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert train and all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    assert "model.dropblock" in torch.load(out / "last.pth", weights_only=True)["generators"]
