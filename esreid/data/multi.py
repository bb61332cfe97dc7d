"""Several training datasets in one run (``data.train``): one train split whose identities and cameras never collide.

Part ``k`` (in the order listed) keeps its own relabelled train pids ``0..N_k-1`` shifted by ``N_0 + ... + N_{k-1}``,
and its cameras shifted by the number of train cameras of the parts before it (``max camid + 1`` of each), so the
same raw pid or camera number in two datasets stays two identities or cameras. The PK sampler then draws J
identities per batch from the union (:class:`~esreid.data.sampler.PKSampler` draws identities by their image
groups, so the parts contribute in proportion to their images). Query and gallery are not combined: each test set
is evaluated on its own (:mod:`esreid.engine.testsets`).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from esreid.data.base import ImageItem, ReIDDataset


def combine_train(parts: Sequence[ReIDDataset]) -> List[ImageItem]:
    """The train items of ``parts`` with pids and camids offset per part (module docstring)."""
    items: List[ImageItem] = []
    pid_offset = cam_offset = 0
    for part in parts:
        items += [it._replace(pid=it.pid + pid_offset, camid=it.camid + cam_offset) for it in part.train]
        pid_offset += part.num_train_pids
        cam_offset += max((it.camid for it in part.train), default=-1) + 1
    return items


class CombinedTrainSet(ReIDDataset):
    """The training data of several datasets: ``train`` = :func:`combine_train` of ``parts`` (label, dataset);
    ``query`` and ``gallery`` are empty (test sets are evaluated one by one)."""

    name = "combined"

    def __init__(self, parts: Sequence[Tuple[str, ReIDDataset]]):
        self.parts = list(parts)
        super().__init__(combine_train([d for _, d in self.parts]), [], [])
        originals = [(d, it) for _, d in self.parts for it in d.train]  # combine_train keeps the order
        self._origin: Dict[ImageItem, Tuple[ReIDDataset, ImageItem]] = dict(zip(self.train, originals))

    def cue_masks(self, items: Sequence[ImageItem]) -> List[str]:
        """The cue-mask file of each of ``items`` (combined train items), from the part it comes from (every part
        must declare cue masks: the config check sees to it)."""
        return [part.cue_masks([original])[0] for part, original in (self._origin[it] for it in items)]

    def summary(self) -> str:
        """Train ids / images / cameras of each part and of the combination."""
        lines = [f"=> {len(self.parts)} training datasets combined",
                 "  ------------------------------------------------------",
                 "  train of              | # ids | # images | # cameras",
                 "  ------------------------------------------------------"]
        for label, part in self.parts:
            ids, imgs, cams = self.split_stats(part.train)
            lines.append(f"  {label:<21.21} | {ids:5d} | {imgs:8d} | {cams:9d}")
        ids, imgs, cams = self.split_stats(self.train)
        lines += ["  ------------------------------------------------------",
                  f"  {'total':<21} | {ids:5d} | {imgs:8d} | {cams:9d}",
                  "  ------------------------------------------------------"]
        return "\n".join(lines)
