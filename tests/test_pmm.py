"""PMM (docs/methods.md §3): loss terms, gradients, train-time mixing of exactly k blocks, eval without mixing, a tiny
run."""

import pytest
import torch

from esreid.config import load_config
from esreid.engine.checkpoint import load_checkpoint
from esreid.engine.trainer import Trainer
from esreid.erasing.gradcam import grad_cam, true_class_score
from esreid.erasing.hardmix import salient_blocks
from esreid.models import build_model
from esreid.models.pmm import PMMConfig

TERMS = {f"s{s}_{t}" for s in (1, 2, 3) for t in ("ce", "triplet")}


def make_model(**kw):
    torch.manual_seed(0)
    cfg = PMMConfig(backbone="resnet_tiny", reduction_dim=16, block_size=[2, 1], top_k=1, **kw)
    return build_model(cfg, num_classes=4)


def batch():
    g = torch.Generator().manual_seed(0)
    # 64x32 images -> 4x2 layer4 map (last stride 1) -> 2x2 blocks of 2x1 cells
    return torch.randn(8, 3, 64, 32, generator=g), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def test_loss_terms_and_every_parameter_gets_a_gradient():
    model = make_model().train()
    images, pids = batch()
    terms = model(images, pids)
    assert set(terms) == TERMS and all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    assert all(p.grad is None for p in model.parameters())  # Grad-CAM guidance leaves .grad clean
    sum(terms.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_default_losses_are_pmm_s():
    cfg = load_config(None, ["model.name=pmm", "data.height=384"]).model  # 24x8 map: the 3x2 blocks fit
    assert (cfg.loss.label_smoothing, cfg.loss.soft_margin, cfg.block_size, cfg.top_k) == (0.1, True, [3, 2], 3)


def capture(model):
    seen = {}
    for name in ("backbone", "part", "stage1", "stage2", "stage3"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, (i[0], o)))
    return seen


def test_training_mixes_k_blocks_of_the_unmixed_part_map_where_grad_cam_points():
    model = make_model().train()
    images, pids = batch()
    seen = capture(model)
    state = model.mix.generator.get_state()
    model(images, pids)
    x, p = seen["backbone"][1], seen["part"][1]
    p2, p3 = seen["stage2"][0], seen["stage3"][0]
    # stage II guidance: Grad-CAM of z1 w.r.t. X; stage III: of z2 w.r.t. P2; both mix the un-mixed P
    omega2 = salient_blocks(grad_cam(true_class_score(seen["stage1"][1].logits, pids), x), (2, 1), 1)
    omega3 = salient_blocks(grad_cam(true_class_score(seen["stage2"][1].logits, pids), p2), (2, 1), 1)
    for mixed, omega in ((p2, omega2), (p3, omega3)):
        changed = (mixed != p).any(dim=1)  # (B, h, w)
        assert not changed[omega == 0].any()  # outside Omega: P itself (for stage III: not P2)
        assert changed[omega == 1].float().mean() > 0.9  # inside: a partner's features
    assert model.mix.generator.get_state().ne(state).any()  # partners drawn from the module's generator


def test_eval_returns_three_features_without_mixing():
    model = make_model().eval()
    images, _ = batch()
    seen = capture(model)
    state = model.mix.generator.get_state()
    with torch.no_grad():
        feats = model(images)
    assert [tuple(f.shape) for f in feats] == [(8, 16)] * 3 and all((f >= 0).all() for f in feats)  # post-ReLU
    p = seen["part"][1]
    assert torch.equal(seen["stage2"][0], p) and torch.equal(seen["stage3"][0], p)
    assert torch.equal(model.mix.generator.get_state(), state)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(feats, model(images)))


def test_training_forward_under_no_grad_still_guides():
    """The trainer's loss probe runs the training forward under no_grad; Grad-CAM still has its graph."""
    model = make_model().train()
    with torch.no_grad():
        terms = model(*batch())
    assert set(terms) == TERMS


def test_errors():
    with pytest.raises(ValueError, match="needs pids"):
        make_model().train()(batch()[0])
    with pytest.raises(ValueError, match="not a multiple of the 3x2 block size"):
        build_model(PMMConfig(backbone="resnet_tiny", reduction_dim=8), 4).train()(*batch())


def test_tiny_training_run(tmp_path, tiny_config):
    cfg = tiny_config("pmm", epochs=1, extra=[
        "data.height=64", "data.width=32", "model.block_size=[2, 1]", "model.top_k=1", "model.reduction_dim=32",
        "test.normalize=false", "test.metric=euclidean", "test.flip=false",
    ])
    metrics = Trainer(cfg, progress=False, log=lambda s: None).train()
    assert 0.0 <= metrics["mAP"] <= 1.0
    assert "model.hardmix" in load_checkpoint(str(tmp_path / "run" / "last.pth"))["generators"]  # partner RNG saved
