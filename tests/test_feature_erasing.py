"""Base + feature-level random erasing (esreid/models/feature_erasing.py) against its definition: the rectangles the
RNG draws, the losses on the erased map, no erasing at test time, the config's checks. (The contract itself is
checked for this model, as for every registered one, by tests/test_contract.py.)"""

import math
import os

import pytest
import torch

from esreid.config import ConfigError, load_config
from esreid.losses import batch_hard_triplet, cross_entropy
from esreid.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 192, 64  # layer4 map 12x4 with resnet_tiny
PIDS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def make(*extra):
    cfg = load_config(None, ["model.name=feature_erasing", "model.backbone=resnet_tiny", *extra])
    torch.manual_seed(0)
    return build_model(cfg.model, 4)


def test_rectangles_follow_the_definition():
    model = make("model.erase_prob=0.5", "model.area=[0.1, 0.3]", "model.aspect=[0.5, 2.0]")
    h, w, n = 24, 8, 4000
    state = model.generator.get_state()
    masks = model.rectangles(n, h, w)
    u = torch.rand(n, 5, generator=torch.Generator().set_state(state))  # the same draws, by hand
    erased = masks.flatten(1).any(dim=1)
    assert torch.equal(erased, u[:, 0] < 0.5)
    assert abs(erased.float().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)  # probability P (4 sigma)
    for i in torch.nonzero(erased).flatten()[:200].tolist():
        rows, cols = torch.nonzero(masks[i], as_tuple=True)
        rh, rw = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert masks[i].sum() == rh * rw  # one full rectangle
        area = (0.1 + 0.2 * float(u[i, 1])) * h * w
        ratio = 0.5 + 1.5 * float(u[i, 2])
        assert rh == min(max(round(math.sqrt(area * ratio)), 1), h)  # rh x rw ~ area with rh / rw ~ ratio
        assert rw == min(max(round(math.sqrt(area / ratio)), 1), w)
        assert int(rows.min()) == int(u[i, 3] * (h - rh + 1)) and int(cols.min()) == int(u[i, 4] * (w - rw + 1))


def test_losses_are_the_baselines_on_the_erased_map_and_eval_does_not_erase():
    model = make("model.erase_prob=1.0").double().train()
    x = torch.randn(len(PIDS), 3, H, W, dtype=torch.float64)
    state = model.generator.get_state()
    terms = model(x, PIDS)
    model.generator.set_state(state)
    a = model.backbone(x)
    mask = model.rectangles(len(PIDS), a.shape[2], a.shape[3])
    assert mask.flatten(1).any(dim=1).all()
    a = a * (~mask[:, None]).double()
    f_t = a.mean(dim=(2, 3))  # GAP of the erased map
    f_i = (f_t - f_t.mean(0)) / torch.sqrt(f_t.var(0, unbiased=False) + model.head.bn.eps)
    torch.testing.assert_close(terms["triplet"], batch_hard_triplet(f_t, PIDS, 0.3))
    torch.testing.assert_close(terms["ce"], cross_entropy(f_i @ model.head.classifier.weight.T, PIDS))
    assert model.stats()["erased_fraction"] == pytest.approx(float(mask.float().mean()))
    model.eval()
    with torch.no_grad():
        state = model.generator.get_state()
        (f,) = model(x)
        assert torch.equal(model.generator.get_state(), state)  # no draw, no erasing at test time
        a = model.backbone(x).mean(dim=(2, 3))
    bn = model.head.bn
    torch.testing.assert_close(f, (a - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps))


@pytest.mark.parametrize("override, message", [
    ("model.area=[0.4, 0.1]", "key 'model.area': expected [min, max] with min <= max, got [0.4, 0.1]"),
    ("model.area=[0.1, 1.5]", "key 'model.area': item 1 (1.5): expected a value <= 1, got 1.5"),
    ("model.aspect=[0, 2]", "key 'model.aspect': item 0 (0.0): expected a value >= 0.001, got 0.0"),
    ("model.erase_prob=2", "key 'model.erase_prob': expected a value <= 1, got 2.0"),
])
def test_bad_settings_are_named(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.name=feature_erasing", override])
    assert message in str(e.value)


def test_config_builds():
    cfg = load_config(os.path.join(ROOT, "configs", "market1501", "feature_erasing.yaml"),
                      ["model.pretrained=", "model.backbone=resnet_tiny"])
    assert (cfg.model.name, cfg.model.erase_prob, cfg.model.area) == ("feature_erasing", 0.5, [0.02, 0.4])
    assert build_model(cfg.model, 3).num_classes == 3
