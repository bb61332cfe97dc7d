"""PKSampler against its definition: J distinct ids x K images per batch, one pass over the images per epoch."""

from collections import Counter

import pytest

from esreid.data.sampler import PKSampler

# identity -> number of images; ids 3 and 7 have fewer than K=4 images
SIZES = {0: 6, 1: 4, 2: 9, 3: 2, 4: 5, 5: 4, 6: 12, 7: 1, 8: 4, 9: 7, 10: 4}


def make_pids():
    pids = []
    for pid, n in SIZES.items():
        pids += [pid] * n
    # interleave so that indices of one id are not contiguous
    return [p for _, p in sorted(enumerate(pids), key=lambda t: (t[0] * 7919) % len(pids))]


def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_batch_structure_and_replacement():
    pids = make_pids()
    j, k = 3, 4
    sampler = PKSampler(pids, ids_per_batch=j, instances=k, seed=1)
    groups = {pid: max(1, n // k) for pid, n in SIZES.items()}
    assert len(sampler) == sum(groups.values()) // j
    seen_ids = Counter()
    for epoch in range(30):
        batches = epoch_batches(sampler, epoch)
        assert len(batches) == len(sampler)
        ids_this_epoch = []
        for batch in batches:
            assert len(batch) == j * k
            per_id = Counter(pids[i] for i in batch)
            assert len(per_id) == j and set(per_id.values()) == {k}
            ids_this_epoch += per_id.keys()
            for pid in per_id:
                chosen = [i for i in batch if pids[i] == pid]
                if SIZES[pid] >= k:  # without replacement
                    assert len(set(chosen)) == k
                else:  # all images used, the rest repeated
                    assert set(chosen) == {i for i, p in enumerate(pids) if p == pid}
        # one pass over the images: an id with n >= K images gives disjoint groups until its groups are used up
        for pid, n in SIZES.items():
            drawn = [i for batch in batches for i in batch if pids[i] == pid]
            assert len(drawn) <= k * (groups[pid] + 1)
            if n >= k:
                first = drawn[: k * groups[pid]]
                assert len(set(first)) == len(first)
        seen_ids.update(ids_this_epoch)
    assert seen_ids[3] > 0 and seen_ids[7] > 0  # ids with < K images still appear
    assert set(seen_ids) == set(SIZES)


def test_deterministic_per_seed_and_epoch():
    pids = make_pids()
    a = PKSampler(pids, 2, 4, seed=5)
    b = PKSampler(pids, 2, 4, seed=5)
    assert epoch_batches(a, 3) == epoch_batches(b, 3)
    assert epoch_batches(a, 3) == epoch_batches(a, 3)  # re-iterating the same epoch repeats it
    assert epoch_batches(a, 3) != epoch_batches(a, 4)
    assert epoch_batches(a, 3) != epoch_batches(PKSampler(pids, 2, 4, seed=6), 3)


def test_every_image_of_large_id_is_eventually_drawn():
    pids = make_pids()
    sampler = PKSampler(pids, 2, 4, seed=0)
    drawn = set()
    for epoch in range(60):
        for batch in epoch_batches(sampler, epoch):
            drawn.update(batch)
    assert drawn == set(range(len(pids)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="only 2 identities"):
        PKSampler([0, 0, 1, 1], ids_per_batch=3, instances=2)
    with pytest.raises(ValueError, match="positive"):
        PKSampler([0, 1], ids_per_batch=1, instances=0)


def test_ddp_ranks_split_one_plan():
    pids = make_pids()
    single = epoch_batches(PKSampler(pids, 2, 2, seed=3), 1)
    ranks = [PKSampler(pids, 2, 2, seed=3, rank=r, world_size=3) for r in range(3)]
    per_rank = [epoch_batches(s, 1) for s in ranks]
    assert all(len(b) == len(single) // 3 == len(s) for b, s in zip(per_rank, ranks))
    for r in range(3):
        assert per_rank[r] == single[r::3][: len(single) // 3]
    with pytest.raises(ValueError, match="rank 3"):
        PKSampler(pids, 2, 2, rank=3, world_size=3)
