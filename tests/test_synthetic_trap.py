"""The saliency trap of the synthetic generator: one large cue unique per train id, shared by groups of test ids.

The cue is located from pixels alone: a trap dataset and the trap-free dataset of the same seed hold the same file
names and differ only where the cue is painted, so the pixels that changed are the cue region."""

import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from esreid.data.base import DatasetError
from esreid.data.datasets.market1501 import Market1501
from esreid.data.datasets.synthetic import SyntheticMarket, generate_synthetic_market, trap_groups
from esreid.data.synth.trap import CUE_VALUES, TRAP_DEFAULTS, _assign_trap

OPTS = dict(num_train_ids=24, num_test_ids=24, images_per_id=6, height=64, width=32, seed=5, num_junk=3,
            num_distractors=2)  # fmt: skip


@pytest.fixture(scope="module", params=["emblem", "bag"])
def pair(request, tmp_path_factory):
    """(trap-free root, trap root with the default options and cue ``param``, trap marker)."""
    base = tmp_path_factory.mktemp(f"trap-{request.param}")
    plain = str(base / "plain")
    generate_synthetic_market(plain, **OPTS)
    trapped = str(base / "trap")
    info = generate_synthetic_market(trapped, trap={"cue": request.param}, **OPTS)
    return plain, trapped, info


def test_trap_layout_parses_and_is_deterministic(pair, tmp_path, synthetic_files):
    plain, trapped, info = pair
    assert info["params"]["trap"] == dict(TRAP_DEFAULTS, cue=info["params"]["trap"]["cue"])
    # same ids, cameras and file names: only pixels change
    assert synthetic_files.listing(trapped) == synthetic_files.listing(plain)
    ds = Market1501(trapped, verbose=False)
    assert ds.check_counts({split: tuple(c) for split, c in info["counts"].items()}) == []
    groups = trap_groups(trapped)
    assert set(groups) == {it.pid for it in ds.query}  # every test pid has a group, train pids none
    with pytest.raises(DatasetError, match="without a trap"):
        trap_groups(plain)
    # the dataset's data.args take the same option; same seed and options, same bytes
    ds = SyntheticMarket(str(tmp_path), verbose=False, trap={"cue": info["params"]["trap"]["cue"]}, **OPTS)
    assert ds.check_counts() == [] and trap_groups(str(tmp_path / "synthetic")) == groups
    assert synthetic_files.digest(str(tmp_path / "synthetic")) == synthetic_files.digest(trapped)


def test_trap_values_unique_in_train_shared_by_test_groups(pair):
    plain, trapped, info = pair
    colours = {int(p): tuple(c) for p, c in info["trap"]["cue_colours"].items()}
    groups = trap_groups(trapped)
    train = [p for p in colours if p not in groups]
    assert len(train) == 24 and len({colours[p] for p in train}) == 24  # the cue alone tells train ids apart
    members = Counter(groups.values())
    assert sorted(members) == list(range(6)) and set(members.values()) == {4}  # 24 test ids, groups of 4
    by_group = {g: {colours[p] for p in groups if groups[p] == g} for g in members}
    assert all(len(v) == 1 for v in by_group.values())  # one value per group ...
    assert len(set.union(*by_group.values())) == 6  # ... and a different one for each group


def test_more_train_ids_than_values_reuse_each_value_at_most_ceil_times():
    is_test = np.zeros(300 + 40, dtype=bool)
    is_test[::17] = True  # 20 test ids
    value, group = _assign_trap(np.random.default_rng(0), is_test, 5)
    uses = Counter(value[~is_test].tolist())
    assert len(uses) == len(CUE_VALUES) and max(uses.values()) == 3  # ceil(320 / 132)
    assert sorted(Counter(group[is_test].tolist()).values()) == [5] * 4 and set(group[~is_test]) == {-1}


def _cue_descriptors(plain, trapped, folders, synthetic_files):
    """pids, [mean RGB of the top half, of the bottom half] of the cue region in the trap images, the same on the
    trap-free images, and the number of person images looked at. The cue region of an image = the pixels that
    differ by > 30 in some channel between the trap image and the trap-free one; images where it is hidden (an
    occluder) are left out."""
    out, seen = [], 0
    for folder in folders:
        for name in sorted(os.listdir(os.path.join(plain, folder))):
            pid = int(synthetic_files.MARKET_NAME.match(name).group(1))
            if pid <= 0:
                continue
            seen += 1
            a, b = (np.asarray(Image.open(os.path.join(r, folder, name)), dtype=np.float64) for r in (plain, trapped))
            region = np.abs(b - a).max(-1) > 30
            rows = np.flatnonzero(region.any(1))
            if len(rows) < 2:  # hidden (occluder)
                continue
            top = region & (np.arange(region.shape[0])[:, None] < (rows[0] + rows[-1] + 1) / 2)
            bottom = region & ~top
            if top.any() and bottom.any():
                out.append((pid, *(np.concatenate([img[top].mean(0), img[bottom].mean(0)]) for img in (b, a))))
    pids = np.array([p for p, _, _ in out])
    return pids, np.stack([d for _, d, _ in out]), np.stack([d for _, _, d in out]), seen


def _nearest_other(features, pids, key):
    """Fraction of images whose nearest image of ANOTHER identity has the same ``key`` (group)."""
    dist = ((features[:, None] - features[None]) ** 2).sum(-1)
    dist[pids[:, None] == pids[None]] = np.inf
    keys = np.array([key[p] for p in pids])
    return float(np.mean(keys[dist.argmin(1)] == keys))


def _median_distances(features, pids, key):
    """Median cue-colour distance between images of two different identities of the same group, and of two groups."""
    dist = np.sqrt(((features[:, None] - features[None]) ** 2).sum(-1))
    keys = np.array([key[p] for p in pids])
    same = keys[:, None] == keys[None]
    other_id = pids[:, None] != pids[None]
    return float(np.median(dist[same & other_id])), float(np.median(dist[~same]))


def test_trap_cue_detectable_from_pixels(pair, synthetic_files):
    """The mean colours of the cue region (found from pixels) are about equal within a test group and differ between
    groups; the same pixels of the trap-free images show no group structure. In train, the cue colours alone find
    the image's own identity as nearest neighbour."""
    plain, trapped, _ = pair
    groups = trap_groups(trapped)
    pids, cue, under, seen = _cue_descriptors(plain, trapped, ["query", "bounding_box_test"], synthetic_files)
    assert len(pids) > 0.9 * seen  # the cue is visible in nearly every test image
    # chance: 3 same-group identities among the 23 others (0.13)
    assert _nearest_other(cue, pids, groups) > 0.7 and _nearest_other(under, pids, groups) < 0.35
    within, between = _median_distances(cue, pids, groups)
    assert within < 0.6 * between
    within, between = _median_distances(under, pids, groups)
    assert within > 0.8 * between
    pids, cue, _, _ = _cue_descriptors(plain, trapped, ["bounding_box_train"], synthetic_files)
    dist = ((cue[:, None] - cue[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    assert np.mean(pids[dist.argmin(1)] == pids) > 0.75


def test_contrast_zero_is_the_trap_free_dataset(pair, tmp_path, synthetic_files):
    """The trap draws from its own random stream and paints only its region: at contrast 0 every image is
    byte-identical to the trap-free dataset (so the other cues are exactly those of the normal generator)."""
    plain, trapped, info = pair
    invisible = str(tmp_path / "invisible")
    generate_synthetic_market(invisible, trap=dict(info["params"]["trap"], contrast=0), **OPTS)
    assert synthetic_files.digest(invisible) == synthetic_files.digest(plain) != synthetic_files.digest(trapped)


@pytest.mark.parametrize(
    "trap, match",
    [
        ([4], "mapping"),
        ({"groups": 4}, "unknown trap option"),
        ({"cue": "hat"}, "cue must be one of"),
        ({"size": 0}, "size"),
        ({"contrast": 1.5}, "contrast"),
        ({"group_size": 5}, "dividing num_test_ids"),  # 24 ids do not split into groups of 5
        ({"group_size": 2.0}, "integer"),
    ],
)
def test_bad_trap_options(trap, match, tmp_path):
    with pytest.raises(DatasetError, match=match):
        generate_synthetic_market(str(tmp_path / "s"), trap=trap, **OPTS)
    assert not os.path.exists(tmp_path / "s")
