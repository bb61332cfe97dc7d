"""SaliencyTrap v2 pieces against hand-made cases: the oracle eraser, cue masks through the augmentation, the
cue-coverage shares, the output-stride-8 trunk, the benchmark's statistics (benchmarks/saliency_trap.py)."""

import dataclasses

import numpy as np
import pytest
import torch

from esreid.config import DataConfig
from esreid.data.transforms import TrainAugment
from esreid.engine.diagnostics import cue_shares
from esreid.erasing.besm import besm, erase_count
from esreid.erasing.oracle import oracle_map
from esreid.models.backbones import build_backbone, feature_size


def _mask(h, w, pixels):
    m = torch.zeros(1, h, w, dtype=torch.bool)
    for y, x in pixels:
        m[0, y, x] = True
    return m


def test_oracle_erases_the_whole_cue_then_its_nearest_ring():
    """R = 1/3 of a 6x4 image = 8 pixels: a 2-pixel cue is erased with 6 of the 10 pixels at Chebyshev distance 1
    from it, never a pixel farther away."""
    masks = _mask(6, 4, [(2, 1), (2, 2)])
    images = torch.ones(1, 3, 6, 4)
    out = besm(images, oracle_map(masks), ratio=1 / 3, prob=1.0)
    erased = out.images[0, 0] == 0
    assert erase_count(1 / 3, 6, 4) == 8 and int(erased.sum()) == 8
    assert erased[masks[0]].all()
    ring = torch.zeros(6, 4, dtype=torch.bool)
    ring[1:4, 0:4] = True  # distance <= 1 from (2, 1) or (2, 2)
    assert not (erased & ~ring).any()


def test_oracle_larger_cue_than_budget_erases_only_cue_pixels():
    cue = [(y, x) for y in range(1, 5) for x in range(0, 3)]  # 12 pixels > 8
    masks = _mask(6, 4, cue)
    erased = besm(torch.ones(1, 3, 6, 4), oracle_map(masks), ratio=1 / 3, prob=1.0).images[0, 0] == 0
    assert int(erased.sum()) == 8 and not (erased & ~masks[0]).any()


def test_oracle_hidden_cue_leaves_the_image_and_prob_is_p():
    """No cue pixel: an all-zero map, left unchanged (BESM's rule for empty maps); with cues, a fraction P of the
    images is erased."""
    empty = torch.zeros(1, 6, 4, dtype=torch.bool)
    out = besm(torch.ones(1, 3, 6, 4), oracle_map(empty), ratio=0.3, prob=1.0)
    assert not out.erased.any() and out.empty.all() and (out.images == 1).all()
    masks = _mask(6, 4, [(0, 0)]).expand(4000, -1, -1)
    g = torch.Generator().manual_seed(0)
    out = besm(torch.ones(4000, 3, 6, 4), oracle_map(masks), ratio=0.25, prob=0.3, generator=g)
    assert abs(out.erased.float().mean().item() - 0.3) < 0.03
    assert (out.images[out.erased][:, 0, 0, 0] == 0).all() and (out.images[~out.erased] == 1).all()


def test_cue_shares_hand_made():
    """Maps at the image size (upsampling is the identity): image 0 ranks its 16 pixels 1..16, R = 1/4 erases the
    bottom row; its cue = 2 pixels of the bottom row + 2 of the top row. Image 1: an all-zero map (never erased)
    and a 1-pixel cue."""
    maps = torch.zeros(2, 4, 4)
    maps[0] = torch.arange(1, 17, dtype=torch.float32).view(4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 3, 0] = masks[0, 3, 1] = masks[0, 0, 0] = masks[0, 0, 3] = True
    masks[1, 1, 1] = True
    s = cue_shares(maps, masks, 0.25)
    assert s["cue_in_erased"] == pytest.approx(2 / 5)  # 2 of the 5 cue pixels lie in the 4 erased
    assert s["erased_on_cue"] == pytest.approx(2 / 4)  # only image 0 is erased
    assert s["cue_area"] == pytest.approx(5 / 32)
    assert s["saliency_on_cue"] == pytest.approx((13 + 14 + 1 + 4) / 136)


def test_cue_shares_upsamples_like_besm():
    """A 2x1 map upsampled to 4x2: the top half is the larger; R = 1/2 erases exactly the top 4 pixels."""
    maps = torch.tensor([[[2.0], [1.0]]])
    masks = torch.zeros(1, 4, 2, dtype=torch.bool)
    masks[0, 0, :] = True
    s = cue_shares(maps, masks, 0.5)
    assert s["cue_in_erased"] == 1.0 and s["erased_on_cue"] == pytest.approx(0.5)


def test_masks_follow_the_images_through_flip_and_crop():
    """Masks marking the pixels whose red channel is 255 stay on those pixels after flip + pad-and-crop, and the
    images come out exactly as without masks (the same random draws)."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 200, (16, 3, 12, 6), dtype=torch.uint8, generator=g)
    masks = torch.rand(16, 12, 6, generator=g) < 0.2
    images[:, 0][masks] = 255
    cfg = DataConfig(flip_prob=0.5, pad=2, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    x, m = TrainAugment(cfg, seed=3).with_aligned(images, masks)
    assert torch.equal(x, TrainAugment(cfg, seed=3)(images))
    assert torch.equal(m, x[:, 0] == 1.0)  # red = 255 -> 1.0 after normalisation
    assert m.dtype == torch.bool and m.shape == masks.shape and not torch.equal(m, masks)  # something moved


def test_resnet_tiny_os8_maps_and_keys():
    os8, os16 = build_backbone("resnet_tiny_os8"), build_backbone("resnet_tiny")
    assert os8(torch.zeros(2, 3, 64, 32)).shape == (2, 128, 8, 4)
    assert os16(torch.zeros(2, 3, 64, 32)).shape == (2, 128, 4, 2)
    assert {k: v.shape for k, v in os8.state_dict().items()} == {k: v.shape for k, v in os16.state_dict().items()}
    assert os8.layer3[0].conv1.stride == (1, 1) and os8.layer3[0].downsample[0].stride == (1, 1)
    # the size a config check reads (bdb, pmm) from the registration's halvings, without building anything
    assert feature_size(64, 32, "layer4", 1, "resnet_tiny_os8") == (8, 4)
    assert feature_size(64, 32, "layer3", 1, "resnet_tiny_os8") == (8, 4)
    assert feature_size(64, 32, "layer3", 1, "resnet_tiny") == (4, 2)


def test_benchmark_statistics_by_hand():
    from benchmarks.saliency_trap import paired, verdict

    p = paired([3.0, 4.0, 5.0], [1.0, 1.0, 1.0])  # differences 2, 3, 4: mean 3, sd 1
    assert p["mean"] == 3.0 and p["sd"] == pytest.approx(1.0)
    assert p["ci"] == pytest.approx((3 - 4.302653 / np.sqrt(3), 3 + 4.302653 / np.sqrt(3)), abs=1e-5)
    assert p["wilcoxon_p"] == pytest.approx(0.25)  # exact: 2 of the 2^3 sign patterns are as extreme
    assert p["p_one"] == pytest.approx(p["p_two"] / 2)
    assert verdict(False, p) == "not tested"
    assert verdict(True, p) == "ES-Net helps here"
    assert verdict(True, paired([1.0, 2.0, 0.5], [1.0, 1.0, 1.0])) == "ES-Net does not help"


# ----------------------------------------------------------------------------------------------------------------
# Generator v2
# ----------------------------------------------------------------------------------------------------------------
def _paint(seed, contrast=1.0):
    from esreid.data.synth.trap import ON_TOP, TRAP_CUES, TrapPaint, patch_position

    rng = np.random.default_rng([seed, 7])
    return TrapPaint(TRAP_CUES["patch"], 1.0, contrast, np.array([[200.0, 30, 35], [30, 60, 170]]),
                     patch_position(rng), "patch" in ON_TOP)


def test_cue_free_twin_identical_outside_the_exact_mask():
    """render_trap_pair: the with-cue image is render_person's with the same draws, the rng ends where one
    render_person call leaves it, the two images are byte-identical outside the mask, and the mask is exactly the
    cue's visible pixels: where the cue is not hidden it is the whole patch rectangle of the drawn position."""
    from esreid.data.synth.render import render_person, render_trap_pair, sample_camera, sample_identity

    whole = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        ident, cam, paint = sample_identity(rng), sample_camera(rng), _paint(seed)
        state = rng.bit_generator.state
        a, b, mask = render_trap_pair(ident, cam, rng, 64, 32, paint)
        after = rng.bit_generator.state
        rng.bit_generator.state = state
        assert np.array_equal(render_person(ident, cam, rng, 64, 32, paint), a)
        assert rng.bit_generator.state == after
        assert np.array_equal(a[~mask], b[~mask])
        assert (np.abs(a.astype(int) - b.astype(int)).max(-1)[mask] > 0).mean() > 0.9  # the cue shows where masked
        if mask.any():
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            box = np.zeros_like(mask)
            box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
            if np.array_equal(mask, box):  # painted on top: only an occluder (or the frame) can cut it
                whole += 1
                assert 16 <= mask.sum() <= 90, mask.sum()  # ~9 x 7 pixels at 64 x 32 (a side occluder cuts it)
    assert whole >= 18  # the 1/4 of images with an occluder may cut it; the rest are whole rectangles


def test_patch_positions_off_axis_and_varied():
    from esreid.data.synth.trap import PATCH_HALF, _patch, patch_position

    rng = np.random.default_rng(0)
    pos = np.array([patch_position(rng) for _ in range(400)])
    assert (np.abs(pos[:, 0]) >= 0.08).all() and (np.abs(pos[:, 0]) <= 0.12).all()
    assert 0.4 < (pos[:, 0] > 0).mean() < 0.6 and (pos[:, 1] >= 0.22).all() and (pos[:, 1] <= 0.62).all()
    assert pos[:, 1].std() > 0.1  # heights spread over the range
    # the rectangle never touches the body axis: its inner edge is >= 0.08 - 0.06 = 0.02 body heights away
    yy, xx = np.mgrid[0:1:200j, -0.3:0.3:301j]
    for dx, yc in pos[:20]:
        top, bottom = _patch(xx, yy, None, 1.0, dataclasses.replace(_paint(0), position=(dx, yc)))
        box = top | bottom
        assert box.any() and (np.abs(xx[box]) >= abs(dx) - PATCH_HALF[1] - 1e-9).all()
        assert np.abs(xx[box]).min() > 0.015


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    from esreid.data.datasets.synthetic import SyntheticMarket

    root = str(tmp_path_factory.mktemp("v2"))
    opts = dict(num_train_ids=12, num_test_ids=8, images_per_id=6, height=64, width=32, num_junk=3,
                num_distractors=2, trap={"cue": "patch"})
    return (SyntheticMarket(root, verbose=False, **opts),
            SyntheticMarket(root, verbose=False, test_rendering="cuefree", **opts))


def test_cue_free_rendering_and_masks_on_disk(v2):
    """The cue-free test folders hold the same names (ids, cameras) as the trap's; each person image has a mask
    of its size; strong pixel differences between the two renderings lie on the mask (JPEG spreads small ones)."""
    import os

    from PIL import Image

    cue, free = v2
    for split in ("query", "gallery"):
        a, b = getattr(cue, split), getattr(free, split)
        assert [(os.path.basename(x.path), x.pid, x.camid) for x in a] == [
            (os.path.basename(x.path), x.pid, x.camid) for x in b]
        assert all("_cuefree" in os.path.dirname(x.path) for x in b)
    on_mask = total = 0
    for items in (cue.train, cue.query):
        for item, path in zip(items, cue.cue_masks(items)):
            mask = np.asarray(Image.open(path)) > 0
            assert mask.shape == (64, 32)
            assert cue.cue_masks([item]) == [path]
        for x, y, path in zip(cue.query, free.query, cue.cue_masks(cue.query)):
            mask = np.asarray(Image.open(path)) > 0
            diff = np.abs(np.asarray(Image.open(x.path), dtype=int) - np.asarray(Image.open(y.path), dtype=int))
            strong = diff.max(-1) > 60
            on_mask, total = on_mask + (strong & mask).sum(), total + strong.sum()
    assert cue.cue_masks(free.query) == cue.cue_masks(cue.query)  # a cue-free image's mask = its twin's
    assert total > 0 and on_mask / total > 0.9


@pytest.mark.parametrize("args, match", [
    ({"test_rendering": "cuefree"}, "needs a trap"),
    ({"test_rendering": "nocue", "trap": {}}, "test_rendering"),
])
def test_test_rendering_option_errors(args, match):
    from esreid.data.datasets.synthetic import SyntheticMarket

    assert match in SyntheticMarket.check_options(args)
    assert SyntheticMarket.check_options({"test_rendering": "cuefree", "trap": {}}) is None
    assert SyntheticMarket.declares_cue_masks({"trap": {}}) and not SyntheticMarket.declares_cue_masks({})


# ----------------------------------------------------------------------------------------------------------------
# The diagnostic and the oracle through the trainer
# ----------------------------------------------------------------------------------------------------------------
TRAP_DATA = ('data.args={"num_train_ids": 8, "num_test_ids": 4, "images_per_id": 4, "height": 32, "width": 16, '
             '"num_junk": 1, "num_distractors": 1, "trap": {"cue": "patch"}}')


@pytest.mark.parametrize("override, key", [("model.saliency=oracle", "model.saliency"),
                                           ("diagnostics.cue_coverage=true", "diagnostics.cue_coverage")])
def test_cue_mask_users_refuse_a_dataset_without_masks(tiny_config, override, key):
    from esreid.errors import ConfigError

    with pytest.raises(ConfigError, match=f"key '{key}'.*declares none"):
        tiny_config("esnet", extra=[override])


@pytest.mark.slow
def test_oracle_run_logs_cue_coverage(tiny_config, monkeypatch):
    """ES-Net with oracle erasing trains on the cue masks (they reach forward_train aligned with the augmented
    images), and the cue-coverage diagnostic writes one record per epoch with shares in [0, 1]."""
    import json
    import os

    from esreid.engine.trainer import Trainer
    from esreid.models.esnet import ESNet

    seen = []
    original = ESNet.forward_train

    def spy(self, images, pids, cue_masks=None):
        seen.append((images.clone(), cue_masks.clone()))
        return original(self, images, pids, cue_masks)

    monkeypatch.setattr(ESNet, "forward_train", spy)
    cfg = tiny_config("esnet", epochs=2, extra=[TRAP_DATA, "model.saliency=oracle", "diagnostics.cue_coverage=true",
                                                "diagnostics.cue_batches=2", "model.erase_prob=1.0"])
    Trainer(cfg, progress=False, log=lambda line: None).train()
    assert seen and all(m.shape == (x.shape[0], 32, 16) and m.dtype == torch.bool for x, m in seen)
    assert any(m.any() for _, m in seen)
    with open(os.path.join(cfg.output_dir, "metrics.jsonl"), encoding="utf-8") as f:
        records = [r for r in map(json.loads, f) if r["type"] == "cue_coverage"]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert all(0 <= r[k] <= 1 for k in ("cue_in_erased", "erased_on_cue", "cue_area", "saliency_on_cue"))


# ----------------------------------------------------------------------------------------------------------------
# What eqs. 2-4 imply for a pair sharing a component (docs/methods.md §1.3, benchmarks/cgram_shared_cue.py)
# ----------------------------------------------------------------------------------------------------------------
def test_cgram_of_the_cosine_sums_to_zero_and_its_gradient_is_the_orthogonal_projection():
    """With GAP pooling, dS/dA(x) = g / N at every location with g = (f_p/|f_p| - S f_i/|f_i|) / |f_i|, which is
    orthogonal to f_i: the pre-ReLU map of eqs. 3-4 sums to zero over the locations, and for f_i = s + e_i,
    f_p = s + e_p (orthogonal parts) the shared part s enters g with the factor 1 - S only."""
    from esreid.erasing.cgram import contributions, cosine_confidence

    g0 = torch.Generator().manual_seed(0)
    a = torch.randn(2, 16, 4, 2, generator=g0).requires_grad_(True)
    f = a.mean((2, 3))
    score = cosine_confidence(f[:1], f[1:]).sum()
    (pre,) = contributions(score, [a], retain_graph=True)
    assert abs(float(pre[0].sum())) < 1e-6 * float(pre[0].abs().sum())
    (grad,) = torch.autograd.grad(score, a)
    fi, fp = f[0].detach(), f[1].detach()
    s = float(score.detach())
    g = (fp / fp.norm() - s * fi / fi.norm()) / fi.norm()
    assert torch.allclose(grad[0], (g / 8)[:, None, None].expand(16, 4, 2), atol=1e-6)
    # orthogonal shared / own parts: g = [s_part (1 - S) + e_p - S e_i] / (|f| |f|) exactly
    basis = torch.linalg.qr(torch.randn(16, 3, generator=g0)).Q.t()  # 3 orthonormal vectors
    shared, ei, ep = 3.0 * basis[0], 0.5 * basis[1], 0.5 * basis[2]
    fi, fp = shared + ei, shared + ep
    n, cos = fi.norm(), float(cosine_confidence(fi[None], fp[None]))
    g = (fp / fp.norm() - cos * fi / fi.norm()) / fi.norm()
    assert torch.allclose(g * n * n, shared * (1 - cos) + ep - cos * ei, atol=1e-6)
    assert float(torch.nn.functional.cosine_similarity(g, shared, dim=0)) < 0.15  # nearly orthogonal
