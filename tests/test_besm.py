"""BESM (Algorithm 1): erased pixel count, erasing probability, location of the erased pixels, the Fig. 3 probe."""

import pytest
import torch
from torch import nn

from esreid.config import DataConfig
from esreid.data.transforms import TestTransform
from esreid.erasing.besm import besm, erase_count, erase_fill, erased_loss_probe, salient_mask
from esreid.models.base import ReIDModel


def test_erase_count_rounds_half_up():
    assert erase_count(0.2, 384, 128) == 9830  # 9830.4
    assert erase_count(0.1, 384, 128) == 4915  # 4915.2
    assert erase_count(0.5, 1, 5) == 3  # 2.5 -> 3 (Python's round would give 2)
    assert erase_count(0.0, 8, 8) == 0


def test_erased_pixels_are_the_top_of_the_upsampled_map():
    torch.manual_seed(0)
    maps = torch.rand(3, 4, 2)
    images = torch.randn(3, 3, 16, 8) + 5.0  # no natural zeros
    erased, chosen, empty = besm(images, maps, ratio=0.25, prob=1.0)
    assert not empty.any()
    assert chosen.all()
    k = erase_count(0.25, 16, 8)
    up = torch.nn.functional.interpolate(maps[:, None], size=(16, 8), mode="bilinear", align_corners=False)[:, 0]
    for n in range(3):
        zero = erased[n] == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # all channels together
        assert int(zero[0].sum()) == k
        # every erased pixel is at least as salient as every kept one
        assert up[n][zero[0]].min() >= up[n][~zero[0]].max()
        assert torch.equal(erased[n][:, ~zero[0]], images[n][:, ~zero[0]])


def test_hand_worked_location():
    # a 2x2 map whose most salient cell is bottom-left; upsampled to 4x4, R = 1/4 erases the 4 pixels nearest it
    maps = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    mask = salient_mask(maps, (4, 4), 0.25)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[2:, :2] = True
    assert torch.equal(mask[0], expected)


def test_probability_and_zero_maps():
    gen = torch.Generator().manual_seed(1)
    n = 4000
    maps = torch.rand(n, 2, 2) + 0.1
    maps[:10] = 0.0  # no positive evidence: never erased
    images = torch.ones(n, 3, 4, 4)
    erased, chosen, empty = besm(images, maps, ratio=0.5, prob=0.3, generator=gen)
    assert not chosen[:10].any()
    gen.manual_seed(1)
    drawn = torch.rand(n, generator=gen) < 0.3  # Algorithm 1 line 2, the same coins
    assert torch.equal(empty, drawn & (torch.arange(n) < 10))  # drawn with an all-zero map: counted, not erased
    assert torch.equal(chosen, drawn & ~empty)
    frac = chosen[10:].float().mean().item()
    assert abs(frac - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5
    zeros = (erased[:, 0] == 0).flatten(1).sum(1)
    assert torch.equal(zeros, chosen.long() * 8)  # exactly round(R*H*W) pixels on the chosen images, 0 elsewhere
    gen.manual_seed(1)
    assert torch.equal(besm(images, maps, 0.5, 0.3, generator=gen)[1], chosen)  # the generator makes it repeatable


def test_fill_values_are_a_black_pixel_or_the_mean_colour():
    data = DataConfig(mean=[0.3, 0.5, 0.7], std=[0.2, 0.25, 0.5])
    black = erase_fill("black", data.mean, data.std)
    raw = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)  # a raw black pixel, through the data pipeline's normalisation
    torch.testing.assert_close(black, TestTransform(data)(raw).flatten())
    assert torch.equal(erase_fill("mean", data.mean, data.std), torch.zeros(3))  # the mean colour normalises to 0
    maps = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])  # top-right cell: R = 1/4 erases the top-right 2x2 of a 4x4
    images = torch.randn(1, 3, 4, 4)
    out = besm(images, maps, 0.25, 1.0, fill=black).images
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, 2:] = True
    for c in range(3):  # each channel gets its own value, only inside the mask
        assert torch.all(out[0, c][mask] == black[c]) and torch.equal(out[0, c][~mask], images[0, c][~mask])


def test_bad_arguments():
    with pytest.raises(ValueError, match="erase_ratio"):
        besm(torch.zeros(1, 3, 4, 4), torch.ones(1, 2, 2), ratio=1.5, prob=0.5)
    with pytest.raises(ValueError, match="2 maps for 1 images"):
        besm(torch.zeros(1, 3, 4, 4), torch.ones(2, 2, 2), ratio=0.1, prob=0.5)


class LossNet(ReIDModel):
    """A minimal model of the contract: loss terms in training, one feature at eval, CG-RAM at ``layer``, an RNG."""

    saliency_layer = "layer"

    def __init__(self):
        super().__init__(cfg=None, num_classes=3)
        self.layer = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 3)
        self.generator = torch.Generator().manual_seed(5)

    def features(self, x):
        return [self.layer(x).mean(dim=(2, 3))]

    def forward_train(self, x, pids):
        noise = torch.rand(1, generator=self.generator)  # the probe must leave the model's RNG as it found it
        return {"ce": nn.functional.cross_entropy(self.fc(self.features(x)[0]), pids) + 0 * noise}

    def generators(self):
        return {"noise": self.generator}


def test_erased_loss_probe_leaves_the_model_unchanged():
    torch.manual_seed(0)
    net = LossNet().train()
    images, pids = torch.randn(4, 3, 8, 4), torch.tensor([0, 0, 1, 1])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = net.generator.get_state()
    with torch.no_grad():
        full = float(net(images, pids)["ce"])
    net.load_state_dict(state)
    net.generator.set_state(rng)
    probe = erased_loss_probe(net, images, pids, ratio=0.5, prob=1.0)  # at the model's saliency layer
    assert probe != pytest.approx(full)  # erasing half of every image changes the loss
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(net.generator.get_state(), rng)  # the model's RNG is restored too
    assert net.training and all(p.grad is None for p in net.parameters())
    assert erased_loss_probe(net, images, pids, ratio=0.5, prob=0.0, layer="layer") == pytest.approx(full)
