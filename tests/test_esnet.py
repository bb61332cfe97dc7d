"""ES-Net model: losses of eq. 1, the saliency pass against the generic CG-RAM, reuse of the AIB pass, BESM inside
the step, eval features, variants, configs."""

import glob
import os

import pytest
import torch

from esreid.config import ConfigError, load_config
from esreid.engine.trainer import Trainer
from esreid.erasing.besm import erase_count
from esreid.erasing.cgram import cgram_batch
from esreid.models import MODELS, build_model
from esreid.models.esnet import ESNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 32, 16
PIDS = torch.tensor([0, 0, 1, 1, 2, 2])


def make(**kw):
    torch.manual_seed(0)
    cfg = ESNetConfig(backbone="resnet_tiny", **kw)
    return build_model(cfg, num_classes=3)


def images():
    torch.manual_seed(1)
    return torch.randn(len(PIDS), 3, H, W) + 3.0  # no natural zeros


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(i[0]))
    return calls


@pytest.mark.parametrize("shared_until", ["layer2", "layer3", "layer4"])
def test_train_step_terms_and_gradients(shared_until):
    model = make(shared_until=shared_until).train()
    terms = model(images(), PIDS)
    assert set(terms) == {"aib_ce", "aib_triplet", "esb_ce", "esb_triplet"}  # eq. 1
    sum(terms.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert set(model.stats()) == {"erased_fraction", "saliency_mean", "empty_map_fraction", "esb_l"}


@pytest.mark.parametrize("shared_until", ["layer2", "layer4"])
def test_saliency_pass_matches_generic_cgram(shared_until):
    model = make(shared_until=shared_until).train()  # float32: P-pooling computes in float32 by design
    x = images()
    inline = model.saliency(x, PIDS)
    generic = cgram_batch(model, x, PIDS, feature_fn=lambda feats: feats[-1])  # the ESB feature, default layer
    assert inline.shape == (len(PIDS), H // 16, W // 16)
    torch.testing.assert_close(inline, generic)
    assert (inline > 0).any()


def _retrieval_maps(model, x, pids):
    """CG-RAM at the ESB's res_conv5 with f = the test-time retrieval vector, written from the branches: eval mode,
    f = [L2(f_aib(x) + f_aib(flip x)), L2(f_esb(x) + f_esb(flip x))] (BoT's rule, docs/methods.md §1.7), eq. 5 over
    easiest positives on f, M = ReLU(Σ_k φ A + mirror(Σ_k φ' A')) (the mirrored pass's shares flipped back)."""
    model.eval()
    leaves, aib, esb = [], [], []
    for img in (x, torch.flip(x, dims=[3])):
        with torch.no_grad():
            t = model.shared(img)
        a = model.esb.stages(t).detach().requires_grad_(True)
        leaves.append(a)
        aib.append(model.aib(t).feature)
        esb.append(model.esb.head(a).feature)
    f = torch.cat([torch.nn.functional.normalize(aib[0] + aib[1], dim=1),
                   torch.nn.functional.normalize(esb[0] + esb[1], dim=1)], dim=1)
    fn = torch.nn.functional.normalize(f.detach(), dim=1)
    sim = (fn @ fn.t()).masked_fill(~((pids[:, None] == pids[None, :]) & ~torch.eye(len(pids), dtype=torch.bool)),
                                    -2.0)
    p = sim.argmax(1)  # every id has two images here
    s = torch.nn.functional.cosine_similarity(f, f[p], dim=1)
    g0, g1 = torch.autograd.grad((s.exp() * s).sum(), leaves)  # eq. 5, then eq. 3
    model.train()
    return torch.relu((g0 * leaves[0]).sum(1) + torch.flip((g1 * leaves[1]).sum(1), dims=[2]))  # eq. 4


def test_saliency_feature_retrieval_is_eq_2_on_the_test_time_vector(randomise_bn):
    """ES-Net eq. 2 defines f as "the query vector and the gallery vector, which are used to retrieve during testing":
    ``saliency_feature: retrieval`` gives those maps; the default (the ESB's feature alone, §7 #3) gives others."""
    model = make(saliency_feature="retrieval").train()
    randomise_bn(model)
    x = images()
    got = model.saliency(x, PIDS)
    want = _retrieval_maps(model, x, PIDS)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert model.training and (got > 0).any()
    esb_only = make().train()
    randomise_bn(esb_only)
    assert not torch.allclose(esb_only.saliency(x, PIDS), got, rtol=1e-2, atol=1e-6)
    terms = model(x, PIDS)  # and it trains
    assert set(terms) == {"aib_ce", "aib_triplet", "esb_ce", "esb_triplet"}


def test_saliency_reuses_the_aib_pass_and_changes_nothing():
    for shared_until, esb_runs in (("layer2", 2), ("layer4", 1)):
        model = make(shared_until=shared_until).train()
        shared_calls = count_calls(model.shared)
        esb_calls = count_calls(model.esb.stages)
        model(images(), PIDS)
        assert len(shared_calls) == 2  # on I (AIB pass, reused by the saliency pass) and on I*
        assert len(esb_calls) == esb_runs  # layer2: saliency + I*; layer4: I* only (empty stages)
    model = make().train()
    t = model.shared(images())
    a = model.aib.stages(t)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.saliency(images(), PIDS, t, a)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.esb.training and model.esb.head.bn.training


@pytest.mark.parametrize("esb_pooling", ["gap", "ppool"])
def test_saliency_head_is_float32_under_bf16_autocast(esb_pooling):
    """The saliency head (pooling, BNNeck, eq. 5, dS/dA) runs in float32 under the trainer's autocast: the cosine
    gradient at the easiest positive (S close to 1) is a difference of near-equal terms that bf16 cannot resolve."""
    model = make(shared_until="layer4", esb_pooling=esb_pooling).train()  # A = the given layer4 output
    x = images()
    t = model.shared(x)
    a = model.aib.stages(t).bfloat16()  # as the AIB pass produces it under autocast
    ref = model.saliency(x, PIDS, t, a.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.saliency(x, PIDS, t, a)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("prob", [0.0, 1.0])
@pytest.mark.parametrize("erase_value", ["black", "mean"])
def test_esb_trains_on_besm_erased_images(prob, erase_value):
    model = make(erase_ratio=0.25, erase_prob=prob, erase_value=erase_value).train()
    mean, std = [0.3, 0.5, 0.7], [0.2, 0.25, 0.5]
    model.set_input_normalization(mean, std)  # what the trainer tells it (data.mean / data.std)
    fill = {"black": -torch.tensor(mean) / torch.tensor(std), "mean": torch.zeros(3)}[erase_value]  # §7 #6
    inputs = count_calls(model.shared)
    x = images()
    model(x, PIDS)
    aib_in, esb_in = inputs
    assert torch.equal(aib_in, x)
    filled = (esb_in == fill[:, None, None]).all(dim=1).flatten(1).sum(dim=1)
    if prob == 0.0:
        assert torch.equal(esb_in, x)
    else:
        assert filled.tolist() == [erase_count(0.25, H, W)] * len(PIDS)
    assert model.stats()["erased_fraction"] == prob and model.stats()["empty_map_fraction"] == 0.0


def test_trainer_tells_the_model_its_normalisation(tiny_config):
    cfg = tiny_config("esnet", extra=["data.mean=[0.3, 0.5, 0.7]", "data.std=[0.2, 0.25, 0.5]"])
    model = Trainer(cfg, progress=False, log=lambda line: None).model
    torch.testing.assert_close(model.erase_fill, -torch.tensor([0.3, 0.5, 0.7]) / torch.tensor([0.2, 0.25, 0.5]))


def test_drawn_images_without_a_positive_are_counted_not_erased():
    torch.manual_seed(0)
    model = build_model(ESNetConfig(backbone="resnet_tiny", erase_ratio=0.25, erase_prob=1.0), num_classes=4).train()
    pids = torch.tensor([0, 0, 1, 1, 2, 3])  # ids 2 and 3 appear once: no easiest positive, an all-zero map
    inputs = count_calls(model.shared)
    model(images(), pids)
    assert torch.equal(inputs[1][4:], images()[4:])  # left unchanged
    assert model.stats()["empty_map_fraction"] == pytest.approx(2 / 6)
    assert model.stats()["erased_fraction"] == pytest.approx(4 / 6)


def test_eval_features_and_variants():
    model = make().eval()
    feats = model(images())
    assert [f.shape for f in feats] == [(len(PIDS), 128)] * 2
    esb_only = make(aib=False).eval()
    assert len(esb_only(images())) == 1
    base_besm = make(aib=False, esb_pooling="gap", erase_ratio=0.1, erase_prob=0.3).train()
    base_besm.cfg.loss.triplet_weight = 0.0
    assert set(base_besm(images(), PIDS)) == {"esb_ce"}
    assert base_besm.no_weight_decay() == set()
    assert set(make(aib_pooling="ppool").no_weight_decay()) == {"aib.head.pool.raw", "esb.head.pool.raw"}


@pytest.mark.parametrize("shared_until", ["layer2", "layer4"])
@pytest.mark.parametrize("aib, esb", [(True, True), (False, True), (True, False)])
def test_saliency_layer_names_a_layer4_of_the_model(shared_until, aib, esb):
    model = make(shared_until=shared_until, aib=aib, esb=esb)
    layer = dict(model.named_modules())[model.saliency_layer]  # the explanations' default layer must exist
    owner = model.esb if esb else model.aib
    assert layer is (owner.stages.layer4 if shared_until == "layer2" else model.shared.layer4)


def test_no_weight_decay_names_and_branch_copies():
    model = make()
    names = dict(model.named_parameters())
    assert model.no_weight_decay() == {"esb.head.pool.raw"} and "esb.head.pool.raw" in names
    # reading A: both branches own a layer3/layer4 initialised from the same weights, not shared tensors
    a, e = names["aib.stages.layer3.0.conv1.weight"], names["esb.stages.layer3.0.conv1.weight"]
    assert torch.equal(a, e) and a.data_ptr() != e.data_ptr()
    assert "shared.layer2.0.conv1.weight" in names and "aib.stages.layer2.0.conv1.weight" not in names


@pytest.mark.parametrize("override, message", [
    ("model.shared_until=layer1", "key 'model.shared_until': expected one of layer2, layer3, layer4; got 'layer1'"),
    ("model.esb_pooling=median", "key 'model.esb_pooling': expected one of gap, gem, gmp, ppool; got 'median'"),
    ("model.erase_ratio=1.5", "key 'model.erase_ratio': expected a value <= 1, got 1.5"),
    ("model.erase_prob=-0.1", "key 'model.erase_prob': expected a value >= 0, got -0.1"),
    ("model.saliency=foo", "key 'model.saliency': expected one of cgram, gradcam, oracle; got 'foo'"),
    ("model.ppool_init=1.0", "key 'model.ppool_init': expected a value > 1, got 1.0"),
    ("model.aib=false", "key 'model.esb': model.aib and model.esb are both false"),
    ("model.saliency_feature=aib", "key 'model.saliency_feature': expected one of esb, retrieval; got 'aib'"),
    ("model.saliency_feature=retrieval", "key 'model.saliency_feature': 'retrieval' is the vector of CG-RAM's eq. 2"),
])
def test_bad_config_values_are_named_at_load_time(override, message):
    extra = {"model.aib=false": ["model.esb=false"],
             "model.saliency_feature=retrieval": ["model.saliency=gradcam"]}.get(override, [])
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.name=esnet", override, *extra])
    assert message in str(e.value) and str(e.value).startswith("command line: ")


def test_configs_load_with_the_paper_values():
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml")))
    mine = [p for p in paths if os.path.basename(p).startswith("esnet") or "besm" in os.path.basename(p)]
    assert len(mine) >= 8
    for p in mine:
        cfg = load_config(p)
        assert cfg.model.name == "esnet" and isinstance(cfg.model, MODELS.meta("esnet")["config"])
        assert cfg.model.last_stride == 1 and cfg.solver.optimizer == "adam" and cfg.data.instances == 4
    market = load_config(os.path.join(ROOT, "configs/market1501/esnet.yaml"))
    m, d, s = market.model, market.data, market.solver
    assert (m.erase_ratio, m.erase_prob, m.shared_until, m.esb_pooling) == (0.2, 0.5, "layer2", "ppool")
    assert (d.height, d.width, d.ids_per_batch, d.instances) == (384, 128, 16, 4)
    assert (s.lr, s.warmup_epochs, s.milestones, s.epochs) == (3.5e-4, 10, [40, 70], 120)
    vid = load_config(os.path.join(ROOT, "configs/vehicleid/esnet.yaml"))
    assert (vid.data.height, vid.data.width, vid.solver.epochs, vid.solver.milestones) == (256, 256, 60, [20, 40])
    bb = load_config(os.path.join(ROOT, "configs/market1501/base_besm.yaml")).model
    assert (bb.aib, bb.esb_pooling, bb.erase_ratio, bb.erase_prob) == (False, "gap", 0.1, 0.3)
    assert bb.loss.triplet_weight == 0
