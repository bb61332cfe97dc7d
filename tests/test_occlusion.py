"""The query occluder (esreid/config/occlusion.py: conditions and their seeding; esreid/data/occlusion.py: shapes and
fill) against hand-made cases: exact boxes from fixed draws, the documented area bound, the fill, determinism (per
query and condition, across calls and processes), and identical occluded pixels for two different models and two runs
through the evaluation itself."""

import math
import subprocess
import sys

import pytest
import torch

from esreid.config.occlusion import Condition, parse_condition
from esreid.data.occlusion import OccludedSource, fill_value, lower_box, occlude, random_box


class FixedDraws:
    """A stand-in generator: ``uniform`` returns ``log_r`` (log of the aspect ratio), ``integers`` the given
    positions in turn."""

    def __init__(self, log_r, positions):
        self.log_r, self.positions = log_r, list(positions)

    def uniform(self, low, high):
        assert low <= self.log_r <= high
        return self.log_r

    def integers(self, low, high):
        value = self.positions.pop(0)
        assert low <= value < high, (low, value, high)
        return value


def test_random_box_by_hand():
    # 20 x 20, F = 0.25, r = 1: a 10 x 10 square (100 px = 0.25 x 400 exactly), placed at the drawn (3, 7)
    assert random_box(20, 20, 0.25, FixedDraws(0.0, [3, 7])) == (3, 7, 10, 10)
    # 8 x 40, F = 0.5, r = 3: h = round(sqrt(160 * 3)) = 22 > 8 -> h = 8, w = round(160 / 8) = 20 (160 px exactly);
    # the top can only be 0 and the left any of 0..20
    assert random_box(8, 40, 0.5, FixedDraws(math.log(3), [0, 20])) == (0, 20, 8, 20)
    # 64 x 32, F = 0.2, r = 1/3: h = round(sqrt(409.6 / 3)) = 12, w = round(sqrt(409.6 * 3)) = 35 > 32 -> w = 32,
    # h = round(409.6 / 32) = 13 (416 px, 0.203 of the image)
    assert random_box(64, 32, 0.2, FixedDraws(-math.log(3), [51, 0])) == (51, 0, 13, 32)


def test_lower_box_by_hand():
    assert lower_box(10, 10, 0.3, None) == (7, 0, 3, 10)  # the bottom 3 rows: 30 px
    assert lower_box(64, 32, 0.25, None) == (48, 0, 16, 32)


@pytest.mark.parametrize("size", [(64, 32), (256, 128), (31, 17), (8, 40)])
@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.4, 0.9])
def test_random_boxes_cover_the_fraction_within_rounding_and_fit(size, fraction):
    h_img, w_img = size
    for index in range(40):
        top, left, h, w = Condition("random", fraction).box(h_img, w_img, index, f"{index:04d}_c1.jpg")
        assert 0 <= top and top + h <= h_img and 0 <= left and left + w <= w_img
        assert abs(h * w - fraction * h_img * w_img) <= (h + w) / 2 + 1  # the documented rounding bound


def test_occlude_fills_exactly_the_box_and_copies():
    image = torch.randint(1, 255, (3, 10, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fill = torch.tensor([0, 0, 0], dtype=torch.uint8)
    out = occlude(image, (2, 3, 4, 5), fill)
    filled = (out == 0).all(0)
    assert int(filled.sum()) == 20 and filled[2:6, 3:8].all()
    assert torch.equal(out[:, ~filled], image[:, ~filled]) and (image != 0).all()  # the input is untouched
    assert occlude(image, None, fill) is image


def test_fill_values():
    assert fill_value("mean", [0.485, 0.456, 0.406]).tolist() == [124, 116, 104]  # round(255 * mean): 0 after norm
    assert fill_value("black", [0.5, 0.5, 0.5]).tolist() == [0, 0, 0]


def test_boxes_depend_on_the_query_and_condition_only():
    a = Condition("random", 0.3)
    box = a.box(64, 32, 5, "/data/x/0002_c1s1_000451_03.jpg")
    assert box == a.box(64, 32, 5, "/elsewhere/0002_c1s1_000451_03.jpg")  # the data root does not matter
    others = {a.box(64, 32, i, "0002_c1s1_000451_03.jpg") for i in range(20)}
    assert len(others) > 15  # another query gets another place
    assert Condition("random", 0.4).box(64, 32, 5, "0002_c1s1_000451_03.jpg") != box
    code = ("from esreid.config.occlusion import parse_condition; "
            "print(parse_condition('random:0.3').box(64, 32, 5, '0002_c1s1_000451_03.jpg'))")
    # another process, with another string-hash seed, draws the same box
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "", "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip() == str(box)


@pytest.mark.parametrize("text, message", [
    ("random:0", "0 < F < 1"), ("random:1", "0 < F < 1"), ("random:x", "0 < F < 1"), ("random", "0 < F < 1"),
    ("none:0.2", "takes no fraction"), ("blur:0.2", "unknown occlusion"),
])
def test_bad_conditions(text, message):
    with pytest.raises(ValueError, match=message):
        parse_condition(text)


def test_condition_names_are_normalised():
    assert parse_condition("random:0.20").name == "random:0.2" and parse_condition("none").name == "none"
    assert not parse_condition("none").occludes and parse_condition("lower:0.3").occludes


def test_occluded_source_occludes_each_image_by_its_index_and_name():
    images = [torch.full((3, 16, 8), 200, dtype=torch.uint8) for _ in range(3)]
    names = [f"/d/{i:04d}_c1.jpg" for i in range(3)]
    cond = parse_condition("random:0.25")
    src = OccludedSource(images, names, cond, torch.tensor([7, 8, 9], dtype=torch.uint8))
    for i in range(3):
        top, left, h, w = cond.box(16, 8, i, names[i])
        hit = (src[i] == torch.tensor([7, 8, 9])[:, None, None]).all(0)
        assert int(hit.sum()) == h * w and hit[top : top + h, left : left + w].all()


# ----------------------------------------------------------------------------------------------------------------
# Through the evaluation: what the models are fed
# ----------------------------------------------------------------------------------------------------------------
def recorded_queries(cfg, seed):
    """The query images (after the test transform) a freshly built ``cfg.model`` (seeded with ``seed``) is fed when
    ``cfg``'s test cases are evaluated: case name -> (N, 3, H, W)."""
    from esreid.engine.testsets import build_cases, evaluate_cases, open_datasets
    from esreid.models import build_model

    torch.manual_seed(seed)
    datasets = open_datasets(cfg, train=False)
    model = build_model(cfg.model, 16, cfg.test).eval()
    seen = []
    original = model.retrieval_features

    def record(images):
        seen.append(images.clone())
        return original(images)

    model.retrieval_features = record
    results = evaluate_cases(model, build_cases(cfg, datasets.test_sets), cfg, torch.device("cpu"))
    # one batch each, in the evaluation's order: the test set's gallery, then each case's queries
    assert len(seen) == 1 + len(results)
    return {r.case.name: images for r, images in zip(results, seen[1:])}


def test_two_models_and_two_runs_see_identical_occluded_queries(tiny_config):
    extra = ["test.occlusion=[none,random:0.3,lower:0.4]", "data.test_batch_size=512"]
    base = recorded_queries(tiny_config("baseline", extra=extra), seed=0)
    other = recorded_queries(tiny_config("esnet", extra=extra), seed=1)  # another method, other weights
    again = recorded_queries(tiny_config("baseline", extra=extra), seed=2)  # another run
    assert set(base) == {"synthetic", "synthetic@random:0.3", "synthetic@lower:0.4"}
    for name in base:
        assert torch.equal(base[name], other[name]) and torch.equal(base[name], again[name]), name
    assert not torch.equal(base["synthetic"], base["synthetic@random:0.3"])
    # lower:0.4 at 32 rows: the bottom round(12.8) = 13 rows, filled with data.mean (0 after normalisation, within
    # the uint8 rounding of the mean); nothing above them changes
    changed = (base["synthetic"] != base["synthetic@lower:0.4"]).any(1)  # (N, H, W)
    assert changed[:, -13:].float().mean() > 0.95 and not changed[:, :-13].any()
    assert base["synthetic@lower:0.4"][:, :, -13:].abs().max() < 0.02
