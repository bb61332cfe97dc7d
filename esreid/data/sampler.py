"""PK sampling: every training batch holds J identities x K images (ES-Net §IV "Training Strategy", J=16, K=4).

One epoch is one pass over the identities: they are shuffled, each contributes one group of K images, and J groups
make a batch (the last incomplete batch is dropped). This is the open-reid / BDB ``RandomIdentitySampler`` reading
of the spec (methods.md "PK sampler"). Note: BoT's sampler instead walks every image of every identity once per epoch
(about ``sum_i floor(n_i / K) / J`` batches), so an "epoch" here is shorter by roughly the mean number of images per
identity divided by K (about 4x on Market-1501) - keep that in mind when reusing epoch-based schedules.
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

    Within a batch the indices are grouped per identity, but users must not rely on the order (use the labels).
    """

    def __init__(self, pids: Sequence[int], ids_per_batch: int, instances: int, seed: int = 0):
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

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffles of ``epoch`` (the same ``(seed, epoch)`` always gives the same batches)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per epoch: ``floor(num_ids / J)``."""
        return len(self._indices) // self.ids_per_batch

    def _draw(self, rng: np.random.Generator, indices: np.ndarray) -> np.ndarray:
        """K indices of one identity: without replacement when it has >= K images."""
        k = self.instances
        if len(indices) >= k:
            return rng.choice(indices, size=k, replace=False)
        extra = rng.choice(indices, size=k - len(indices), replace=True)
        return np.concatenate([rng.permutation(indices), extra])

    def __iter__(self) -> Iterator[List[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self._indices))
        j = self.ids_per_batch
        for start in range(0, len(self) * j, j):
            batch = np.concatenate([self._draw(rng, self._indices[i]) for i in order[start : start + j]])
            yield batch.tolist()
