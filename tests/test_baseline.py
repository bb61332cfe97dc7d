"""BoT baseline: loss terms per definition (triplet on pre-BN, CE on post-BN logits), training, eval, config."""

import pytest
import torch

from esreid.config import ConfigError, LossConfig, load_config
from esreid.losses import batch_hard_triplet, cross_entropy
from esreid.models import MODELS, build_model
from esreid.models.backbones import BACKBONES
from esreid.models.baseline import Baseline, BaselineConfig


def _batch(P=4, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(P, 3, 64, 32, generator=g)
    pids = torch.arange(P).repeat_interleave(K)
    images = protos[pids] + 0.3 * torch.randn(P * K, 3, 64, 32, generator=g)
    return images, pids


def test_loss_terms_follow_bnneck_definition():
    torch.manual_seed(0)
    model = Baseline(BaselineConfig(backbone="resnet_tiny", loss=LossConfig(label_smoothing=0.1)), num_classes=4)
    images, pids = _batch()
    terms = model(images, pids)
    assert set(terms) == {"ce", "triplet"}
    f_t = model.backbone(images).mean(dim=(2, 3))  # GAP
    f_i = model.head.bn(f_t)
    assert terms["triplet"].item() == pytest.approx(batch_hard_triplet(f_t, pids, 0.3).item(), rel=1e-5)
    assert terms["triplet"].item() != pytest.approx(batch_hard_triplet(f_i, pids, 0.3).item(), rel=1e-3)
    logits = f_i @ model.head.classifier.weight.t()
    assert terms["ce"].item() == pytest.approx(cross_entropy(logits, pids, 0.1).item(), rel=1e-5)
    ce_only = Baseline(BaselineConfig(backbone="resnet_tiny", loss=LossConfig(triplet_weight=0.0)), num_classes=4)
    assert set(ce_only(images, pids)) == {"ce"}


@pytest.mark.parametrize("pooling", ["gap", "ppool"])
def test_tiny_baseline_trains_and_evaluates(pooling):
    torch.manual_seed(0)
    model = Baseline(BaselineConfig(backbone="resnet_tiny", pooling=pooling), num_classes=4)
    images, pids = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = sum(model(images, pids).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    with torch.no_grad():
        feats = model(images[:5])
    assert isinstance(feats, list) and len(feats) == 1 and feats[0].shape == (5, 128)
    assert torch.isfinite(feats[0]).all()


def test_no_weight_decay_and_stats():
    gap = Baseline(BaselineConfig(backbone="resnet_tiny"), num_classes=3)
    assert gap.no_weight_decay() == set() and gap.stats() == {}
    pp = Baseline(BaselineConfig(backbone="resnet_tiny", pooling="ppool", ppool_init=31.0), num_classes=3)
    names = dict(pp.named_parameters())
    assert pp.no_weight_decay() == {"head.pool.raw"} and "head.pool.raw" in names
    assert pp.stats() == {"global_l": pytest.approx(31.0)}
    with pytest.raises(ValueError, match="needs pids"):
        pp(torch.rand(2, 3, 64, 32))


def test_pretrained_backbone_is_loaded(tmp_path):
    torch.manual_seed(1)
    src = BACKBONES.get("resnet_tiny")()
    torch.save(src.state_dict(), tmp_path / "imagenet.pth")
    model = Baseline(BaselineConfig(backbone="resnet_tiny", pretrained=str(tmp_path / "imagenet.pth")), 3)
    assert torch.equal(model.backbone.layer4[0].conv1.weight, src.layer4[0].conv1.weight)
    assert not any(k.startswith("backbone.fc.") for k in model.state_dict())


def test_built_from_config():
    cfg = load_config(overrides=["model.name=baseline", "model.backbone=resnet_tiny", "model.pooling=gem"])
    assert isinstance(cfg.model, BaselineConfig) and MODELS.get("baseline") is Baseline
    model = build_model(cfg.model, num_classes=5)
    assert model.stats() == {"global_p": pytest.approx(3.0)}
    with pytest.raises(ConfigError, match="command line: key 'model.pooling': expected one of gap, gem, gmp, ppool; "
                                          "got 'avg'"):
        load_config(overrides=["model.pooling=avg"])
