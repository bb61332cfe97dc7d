"""PK sampling: every training batch holds J identities x K images (ES-Net §IV "Training Strategy", J=16, K=4).

One epoch is one pass over the *images*, as in BoT's ``RandomIdentitySampler`` (the code base whose 120-epoch
schedule with decays at 40/70 ES-Net adopts): each identity's images are shuffled and cut into groups of K (an
identity with fewer than K images is completed with replacement; a remainder of fewer than K images waits for a
later epoch), and each batch takes one group from each of J distinct identities. An epoch has
``floor(sum_i max(1, floor(n_i / K)) / J)`` batches (about 200 on Market-1501 at 16x4). Identities are drawn with
probability proportional to their remaining groups, so the epoch length is exact; if fewer than J identities still
have groups, identities whose groups are used up contribute a fresh group.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Sequence

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[List[int]]):
    """A ``batch_sampler`` yielding lists of ``J*K`` dataset indices: J distinct identities, K indices each.

    Args:
        pids: identity of each dataset item, ``pids[i]`` for index ``i``.
        ids_per_batch: J.
        instances: K. An identity with at least K images gets K distinct ones; one with ``n < K`` images gets all
            ``n`` of them plus ``K - n`` drawn with replacement (so every image of a rare identity is used; plain
            with-replacement sampling could skip some).
        seed: the shuffles of epoch ``e`` depend only on ``(seed, e)``; call :meth:`set_epoch` before iterating.
        rank, world_size: under DDP, process ``rank`` yields batches ``rank, rank + world_size, ...`` of the
            epoch's plan (every process computes the same plan from the same seed).

    Within a batch the indices are grouped per identity, but users must not rely on the order (use the labels).
    """

    def __init__(self, pids: Sequence[int], ids_per_batch: int, instances: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if ids_per_batch <= 0 or instances <= 0:
            raise ValueError(
                f"PKSampler: ids_per_batch (J) and instances (K) must be positive, got J={ids_per_batch}, K={instances}"
            )
        groups: Dict[int, List[int]] = {}
        for index, pid in enumerate(pids):
            groups.setdefault(int(pid), []).append(index)
        if len(groups) < ids_per_batch:
            raise ValueError(
                f"PKSampler: ids_per_batch (J) = {ids_per_batch} but the training set has only {len(groups)} "
                "identities; lower data.ids_per_batch"
            )
        self._indices = [np.asarray(groups[pid], dtype=np.int64) for pid in sorted(groups)]
        self.ids_per_batch = ids_per_batch
        self.instances = instances
        self.seed = seed
        self.epoch = 0
        if not 0 <= rank < world_size:
            raise ValueError(f"PKSampler: rank {rank} is outside 0..{world_size - 1}")
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffles of ``epoch`` (the same ``(seed, epoch)`` always gives the same batches)."""
        self.epoch = epoch

    def num_batches(self) -> int:
        """Batches in an epoch's plan, all processes together: ``floor(sum_i max(1, floor(n_i / K)) / J)``."""
        groups = sum(max(1, len(ix) // self.instances) for ix in self._indices)
        return groups // self.ids_per_batch

    def __len__(self) -> int:
        """Batches this process yields per epoch."""
        return self.num_batches() // self.world_size

    def _groups(self, rng: np.random.Generator, indices: np.ndarray) -> List[np.ndarray]:
        """One identity's images in shuffled groups of K (without replacement when it has >= K images)."""
        k = self.instances
        order = rng.permutation(indices)
        if len(order) < k:
            order = np.concatenate([order, rng.choice(indices, size=k - len(order), replace=True)])
        return [order[i * k : (i + 1) * k] for i in range(len(order) // k)]

    def __iter__(self) -> Iterator[List[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = [self._groups(rng, ix) for ix in self._indices]
        j = self.ids_per_batch
        for b in range(len(self) * self.world_size):
            remaining = np.array([len(g) for g in groups], dtype=np.float64)
            available = np.flatnonzero(remaining)
            if len(available) >= j:
                chosen = rng.choice(available, size=j, replace=False, p=remaining[available] / remaining.sum())
            else:  # top up with identities whose groups are used up
                extra = rng.choice(np.flatnonzero(remaining == 0), size=j - len(available), replace=False)
                for i in extra:
                    groups[i] = self._groups(rng, self._indices[i])[:1]
                chosen = rng.permutation(np.concatenate([available, extra]))
            batch = np.concatenate([groups[i].pop() for i in chosen]).tolist()
            if b % self.world_size == self.rank:
                yield batch
