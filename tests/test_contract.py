"""The model contract (esreid/models/base.py, docs/architecture.md) for every registered model.

Each test is parametrised over ``MODELS.names()``: a new method is checked by registering it, with no list to update.
Models are tiny (resnet_tiny) on 192x64 images, whose 12x4 layer4 map makes every method's default settings valid.
"""

import os

import pytest
import torch

from esreid.config import load_config
from esreid.engine.checkpoint import load_trained_model, save_checkpoint
from esreid.engine.evaluator import extract_features
from esreid.erasing.cgram import cgram_pair, resolve_layer
from esreid.models import MODELS, build_model
from esreid.models.base import ReIDModel

H, W = 192, 64
PIDS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
NAMES = MODELS.names()


def config(name, *extra):
    return load_config(None, [f"model.name={name}", "model.backbone=resnet_tiny", f"data.height={H}",
                              f"data.width={W}", *extra])


def make(name, *extra, num_classes=4):
    cfg = config(name, *extra)
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes, cfg.test)
    return cfg, model


def trained(name, *extra):
    """A model after two training steps (non-trivial BatchNorm statistics), in eval mode."""
    cfg, model = make(name, *extra)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for step in range(2):
        loss = sum(model(images(step), PIDS).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return cfg, model.eval()


def images(seed=0, n=len(PIDS)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, H, W, generator=g)


def hand_retrieval(model, x):
    """The ranked vector by the definition of the rule: per-branch sum over {x, mirror(x)} when flipping, per-branch
    L2 when normalising, concatenation."""
    rule = model.retrieval
    with torch.no_grad():
        views = [model.features(x)] + ([model.features(torch.flip(x, dims=[3]))] if rule.flip else [])
    parts = [sum(v[i].double() for v in views) for i in range(len(views[0]))]
    parts = [p / p.norm(dim=1, keepdim=True) if rule.normalize else p for p in parts]
    return torch.cat(parts, dim=1)


def test_every_model_is_registered_with_its_config_class():
    assert NAMES, "no model registered"
    for name in NAMES:
        cls, cfg_cls = MODELS.get(name), MODELS.meta(name)["config"]
        assert issubclass(cls, ReIDModel), name
        assert isinstance(config(name).model, cfg_cls) and config(name).model.name == name


@pytest.mark.parametrize("name", NAMES)
def test_train_terms_are_finite_scalars_and_reach_every_parameter(name):
    _, model = make(name)
    model.train()
    terms = model(images(), PIDS)
    assert terms and all(t.dim() == 0 and torch.isfinite(t) for t in terms.values()), terms
    sum(terms.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [], f"{name}: parameters without gradient: {missing}"
    stats = model.stats()
    assert all(isinstance(v, float) for v in stats.values()), stats
    assert model.num_classes == 4


@pytest.mark.parametrize("name", NAMES)
def test_eval_features_shapes_and_the_retrieval_vector(name):
    _, model = trained(name)
    x = images(5, 3)
    with torch.no_grad():
        feats = model(x)
        assert isinstance(feats, list) and feats and all(f.shape[0] == 3 and f.dim() == 2 for f in feats)
        assert [f.shape for f in model.features(x)] == [f.shape for f in feats]
        got = model.retrieval_features(x)
    assert got.shape == (3, sum(f.shape[1] for f in feats)) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), hand_retrieval(model, x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        single = model.retrieval_features(x[:1])  # batch of one (no squeeze pitfalls), same features
    torch.testing.assert_close(single, got[:1], rtol=2e-3, atol=1e-5)  # batched vs single conv: float32 rounding


@pytest.mark.parametrize("flip, normalize, metric", [(True, True, "cosine"), (False, False, "euclidean")])
@pytest.mark.parametrize("name", NAMES)
def test_the_evaluator_honours_the_retrieval_rule(monkeypatch, name, flip, normalize, metric):
    """Extraction equals the rule's vector by definition, and the protocol ranks with the rule's metric."""
    from esreid.engine import evaluator
    from esreid.evaluation import protocols

    _, model = trained(name, f"test.flip={str(flip).lower()}", f"test.normalize={str(normalize).lower()}",
                       f"test.metric={metric}")
    assert (model.retrieval.flip, model.retrieval.normalize, model.retrieval.metric) == (flip, normalize, metric)
    x = images(7, 4)
    batch = {"images": x, "pids": torch.arange(4), "camids": torch.zeros(4, dtype=torch.long)}
    feats, _, _ = extract_features(model, [batch], torch.device("cpu"), lambda t: t)
    torch.testing.assert_close(feats.double(), hand_retrieval(model, x), rtol=1e-5, atol=1e-5)

    seen = {}

    def protocol(qf, q_pids, q_camids, gf, g_pids, g_camids, **kw):
        seen.update(kw)
        return {"mAP": 0.0}

    monkeypatch.setattr(protocols.PROTOCOLS, "get", lambda name: protocol)
    monkeypatch.setattr(evaluator, "extract_features", lambda *a, **k: (feats, torch.arange(4), torch.zeros(4)))
    monkeypatch.setattr("esreid.data.loader.build_test_loader", lambda *a, **k: None)

    class Dataset:
        query = gallery = [None] * 4
        protocol = "market"

    cfg = config(name)
    features = evaluator.extract_test_features(model, Dataset(), cfg, torch.device("cpu"))
    evaluator.evaluate_features(features, Dataset(), cfg, model.retrieval.metric)
    assert seen["metric"] == metric


@pytest.mark.parametrize("flip, normalize, metric", [(True, True, "cosine"), (False, False, "euclidean")])
@pytest.mark.parametrize("name", NAMES)
def test_cgram_explains_the_ranked_similarity(name, flip, normalize, metric):
    """CG-RAM's similarity is the one the evaluator ranks by (minus its distance), computed on the rule's vectors,
    at the model's default layer, which runs once per forward pass."""
    _, model = trained(name, f"test.flip={str(flip).lower()}", f"test.normalize={str(normalize).lower()}",
                       f"test.metric={metric}")
    q, g = images(11, 2), images(12, 2)
    m_q, m_g, s = cgram_pair(model, q, g)
    vq, vg = hand_retrieval(model, q), hand_retrieval(model, g)
    if metric == "cosine":
        want = torch.nn.functional.cosine_similarity(vq, vg)
    else:
        want = -((vq - vg) ** 2).sum(dim=1)
    torch.testing.assert_close(s.double(), want, rtol=1e-3, atol=1e-5)
    layer = resolve_layer(model, model.saliency_layer)
    runs = []
    handle = layer.register_forward_hook(lambda *a: runs.append(1))
    with torch.no_grad():
        model.features(q)
    handle.remove()
    assert runs == [1], f"{name}: the saliency layer {model.saliency_layer!r} ran {len(runs)} times"
    assert m_q.shape == m_g.shape and m_q.dim() == 3 and float(m_q.sum() + m_g.sum()) > 0
    assert all(p.grad is None for p in model.parameters())  # explanations leave the parameters alone


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_with_num_classes(tmp_path, name):
    cfg, model = trained(name)
    path = str(tmp_path / "ck.pth")
    save_checkpoint(path, model=model, epoch=1, config={}, num_classes=model.num_classes)
    loaded = load_trained_model(cfg, path)
    assert loaded.num_classes == 4 and not loaded.training
    x = images(3, 2)
    with torch.no_grad():
        for a, b in zip(loaded.features(x), model.features(x)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_generators_and_weight_decay_exclusions_are_declared(name):
    """Every RNG a model owns is declared in generators() (else a resumed run draws other numbers), and every name in
    no_weight_decay() is a parameter."""
    _, model = make(name, "model.backbone=resnet_tiny")
    declared = {id(g) for g in model.generators().values()}
    owned = {id(v) for m in model.modules() for v in vars(m).values() if isinstance(v, torch.Generator)}
    assert owned <= declared, f"{name}: RNGs not declared in generators()"
    assert all(isinstance(g, torch.Generator) for g in model.generators().values())
    params = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(params)


@pytest.mark.parametrize("name", NAMES)
def test_trainer_checkpoints_the_models_generators(tiny_config, tmp_path, name):
    from esreid.engine.checkpoint import load_checkpoint
    from esreid.engine.trainer import Trainer

    cfg = tiny_config(name, epochs=1, extra=[f"data.height={H}", f"data.width={W}", "test.eval_period=0",
                                             "checkpoint.period=0"])
    trainer = Trainer(cfg, progress=False, log=lambda s: None)
    trainer.train()
    saved = load_checkpoint(os.path.join(cfg.output_dir, "last.pth"))
    assert {f"model.{k}" for k in trainer.model.generators()} <= set(saved["generators"])
    assert saved["num_classes"] == trainer.dataset.num_train_pids == trainer.model.num_classes
