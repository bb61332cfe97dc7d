"""ONNX export: every registered model's graph against PyTorch with onnxruntime (fixed and dynamic batch, flip in or
out of the graph), the wrapper against the evaluator's feature extraction, and `esreid export` on a checkpoint."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from esreid.cli import main
from esreid.config import load_config
from esreid.engine.evaluator import extract_features
from esreid.export import ExportError, RetrievalModel, export_onnx, verify_onnx
from esreid.models import MODELS, build_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 192, 64  # a 12x4 layer4 map: every model's defaults are valid (PMM's 3x2 blocks)
TINY = ["model.backbone=resnet_tiny", "model.pretrained=", f"data.height={H}", f"data.width={W}"]
# every registered model with its defaults, plus ES-Net with P-pooling in both branches (autocast off + pow)
CASES = [(name, []) for name in MODELS.names()] + [("esnet", ["model.aib_pooling=ppool", "model.esb_pooling=ppool"])]


def trained_like(name, extra=(), num_classes=5, seed=0):
    """A tiny model in eval mode whose BN statistics and pooling exponents are not at their initial values."""
    cfg = load_config(None, [f"model.name={name}", *TINY, *extra])
    torch.manual_seed(seed)
    model = build_model(cfg.model, num_classes)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        for n, p in model.named_parameters():
            if n.endswith("raw"):  # GeM / P-pooling exponent
                p.add_(1.0)
    return cfg, model.eval()


def retrieval_net(model, **rule):
    """The exported wrapper of ``model`` with its retrieval rule changed as given (flip, normalize, metric)."""
    model.retrieval = model.retrieval.replace(**rule)
    return RetrievalModel(model)


@pytest.mark.parametrize("name,extra", CASES, ids=[n + ("_ppool" if e else "") for n, e in CASES])
def test_dynamic_batch_export_matches_pytorch(tmp_path, name, extra):
    cfg, model = trained_like(name, extra)
    net = retrieval_net(model, flip=True, normalize=True)
    path = str(tmp_path / "m.onnx")
    export_onnx(net, path, H, W, dynamic_batch=True)
    assert verify_onnx(net, path, H, W, batches=(1, 3, 5)) <= 1e-4
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (feats,) = session.run(["feats"], {"images": np.random.default_rng(0).normal(size=(4, 3, H, W)).astype("f4")})
    dims = sum(b.shape[1] for b in model(torch.zeros(1, 3, H, W)))
    assert feats.shape == (4, dims)


@pytest.mark.parametrize("flip,normalize", [(True, True), (False, True), (True, False), (False, False)])
def test_wrapper_equals_evaluator_features(flip, normalize):
    _, model = trained_like("esnet", ["model.esb_pooling=ppool"])
    images = torch.randn(3, 3, H, W, dtype=torch.float64).float()
    batch = {"images": images, "pids": torch.zeros(3, dtype=torch.long), "camids": torch.zeros(3, dtype=torch.long)}
    model.retrieval = model.retrieval.replace(flip=flip, normalize=normalize)
    want, _, _ = extract_features(model, [batch], torch.device("cpu"), lambda x: x)
    with torch.no_grad():
        got = retrieval_net(model, flip=flip, normalize=normalize)(images)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # by hand: branch sums over {x, flip(x)}, per-branch L2, concatenation
    with torch.no_grad():
        views = [model(images)] + ([model(images.flip(3))] if flip else [])
    parts = [sum(v[i].double() for v in views) for i in range(len(views[0]))]
    parts = [p / p.norm(dim=1, keepdim=True) if normalize else p for p in parts]
    torch.testing.assert_close(got.double(), torch.cat(parts, 1), rtol=1e-5, atol=1e-5)


def test_fixed_batch_graph_and_flip_outside_graph(tmp_path):
    _, model = trained_like("baseline")
    net = retrieval_net(model, flip=False, normalize=True)
    path = str(tmp_path / "m.onnx")
    export_onnx(net, path, H, W, batch=1)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, H, W]
    assert verify_onnx(net, path, H, W, batches=(1,)) <= 1e-4
    x = torch.randn(1, 3, H, W)
    (got,) = session.run(["feats"], {"images": x.numpy()})
    with torch.no_grad():
        want = torch.nn.functional.normalize(model(x)[0], dim=1)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_verify_fails_loudly_when_graph_and_model_differ(tmp_path):
    _, model = trained_like("baseline")
    net = retrieval_net(model, flip=True, normalize=False)
    path = str(tmp_path / "m.onnx")
    export_onnx(net, path, H, W, dynamic_batch=True)
    with torch.no_grad():
        next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)).bias.add_(0.01)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        verify_onnx(net, path, H, W)
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="bad.onnx"):
        verify_onnx(net, str(tmp_path / "bad.onnx"), H, W)


def test_esreid_export_command(tmp_path, capsys):
    _, model = trained_like("esnet", num_classes=7)  # the classifier size comes from the checkpoint
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "sub" / "esnet.onnx"
    config = os.path.join(ROOT, "configs", "market1501", "esnet.yaml")
    argv = ["export", "--config", config, "--weights", str(weights), "--out", str(out), "--dynamic-batch", *TINY]
    assert main(argv) == 0
    assert "max abs diff" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, H, W)
    (got,) = session.run(["feats"], {"images": x.numpy()})
    with torch.no_grad():
        want = retrieval_net(model, flip=True, normalize=True)(x)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    assert main(["export", "--config", config, "--weights", str(tmp_path / "none.pth"), "--out", str(out)]) == 2
    assert "none.pth" in capsys.readouterr().err


@pytest.mark.parametrize("name", MODELS.names())
def test_trained_model_loads_without_knowing_the_number_of_ids(tmp_path, name):
    """``esreid export`` / ``visualize`` have no dataset: the classifier size comes from the checkpoint (recorded by
    the trainer), or, for a bare state dict, from the shapes of the model's classifiers (AELM's are 1x1 convs)."""
    from esreid.engine.checkpoint import load_trained_model, save_checkpoint

    cfg, model = trained_like(name, num_classes=7)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    loaded = load_trained_model(cfg, str(tmp_path / "w.pth"))
    assert loaded.num_classes == 7
    save_checkpoint(str(tmp_path / "c.pth"), model=model, epoch=1, config={}, num_classes=7)
    assert load_trained_model(cfg, str(tmp_path / "c.pth")).num_classes == 7
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded(x), model(x)))


def test_tolerance_is_relative_to_the_feature_scale(tmp_path):
    """Unnormalised features of a large model are large; float32 rounding between runtimes grows with them."""
    _, model = trained_like("baseline")
    with torch.no_grad():  # features around 1e6: rounding differences far above 1e-4 in absolute terms
        next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)).weight.mul_(1e6)
    net = retrieval_net(model, flip=True, normalize=False)
    path = str(tmp_path / "big.onnx")
    export_onnx(net, path, H, W)
    worst = verify_onnx(net, path, H, W)
    with torch.no_grad():
        scale = float(net(torch.randn(2, 3, H, W)).abs().max())
    assert scale > 1e5 and worst <= 1e-4 * scale
    with torch.no_grad():  # a real change at that scale is still caught
        next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)).bias.add_(1e3)
    with pytest.raises(ExportError, match="largest feature value"):
        verify_onnx(net, path, H, W)
