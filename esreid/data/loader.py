"""Torch Datasets and DataLoaders built from a :class:`~esreid.config.DataConfig`.

A batch is a dict (docs/architecture.md, "Loaders"): ``images`` uint8 ``(B, 3, H, W)`` already resized, ``pids``
int64 ``(B,)``, ``camids`` int64 ``(B,)``, ``index`` int64 ``(B,)`` (position in the item list). Float conversion and
augmentation happen later, batched on the device (:mod:`esreid.data.transforms`).

Pixels come from an *image source*: any object with ``__len__`` and ``__getitem__(i) -> uint8 (3, H, W)`` over the
items, raising :class:`~esreid.data.base.DatasetError` for an unreadable image. :class:`FileImageSource` decodes
files on the fly; with ``data.cache: true`` the decoded-image cache of :mod:`esreid.data.cache` is used instead.

Unreadable training images (rule): a training image that fails to decode is logged once (warning naming the file),
marked bad, and replaced by the next readable image of the same identity (in item order, wrapping around). Marks
live in shared memory, so they are counted across loader workers. :class:`ReIDImageDataset` raises a
``DatasetError`` listing the files when an identity has no readable image left, or when more than ``max_bad``
distinct images are bad (default ``max(10, 1%)`` of the training images: beyond that the data, not a stray file, is
broken). Evaluation loaders never substitute: a bad query/gallery image raises at once, since it would change the
metric.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from esreid.config import DataConfig
from esreid.data.base import DatasetError, ImageItem
from esreid.data.sampler import PKSampler
from esreid.data.transforms import decode_resize

logger = logging.getLogger(__name__)


class ImageSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> torch.Tensor: ...


class FileImageSource:
    """Decode + resize ``items[i].path`` on every access. ``source[i]`` -> uint8 ``(3, height, width)``."""

    def __init__(self, items: Sequence[ImageItem], height: int, width: int):
        self.paths = [it.path for it in items]
        self.height = height
        self.width = width

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return decode_resize(self.paths[i], self.height, self.width)


def build_image_source(cfg: DataConfig, items: Sequence[ImageItem]) -> ImageSource:
    """The cache when ``cfg.cache`` (default folder ``<root>/.esreid_cache``), else :class:`FileImageSource`."""
    if cfg.cache:
        from esreid.data.cache import build_cache_source  # lazy: only needed with data.cache

        cache_dir = cfg.cache_dir or os.path.join(cfg.root, ".esreid_cache")
        return build_cache_source(items, cfg.height, cfg.width, cache_dir)
    return FileImageSource(items, cfg.height, cfg.width)


class MaskSource:
    """Cue masks from files (a dataset's :meth:`~esreid.data.base.ReIDDataset.cue_masks`): ``source[i]`` -> bool
    ``(H, W)``, non-zero pixels of the i-th PNG, resized to ``(H, W)`` by nearest neighbour when its size differs."""

    def __init__(self, paths: Sequence[str], height: int, width: int):
        self.paths, self.height, self.width = list(paths), height, width

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as img:
                img = img.convert("L")
                if img.size != (self.width, self.height):
                    img = img.resize((self.width, self.height), Image.NEAREST)
                return torch.from_numpy(np.asarray(img) > 0)
        except OSError as e:
            raise DatasetError(f"cue mask {self.paths[i]}: unreadable ({e}); regenerate the dataset") from None


class ReIDImageDataset(Dataset):
    """``dataset[i]`` -> ``dict(images=uint8 (3, H, W), pids=int, camids=int, index=i)`` (and ``cue_masks=bool
    (H, W)`` of the same image when ``masks`` is given).

    Args:
        items: the images (``pid``/``camid`` are returned as they are).
        source: pixels of ``items[i]`` (same length and order).
        substitute_bad: replace an unreadable image by another of the same identity (training) instead of raising.
        max_bad: most distinct unreadable images tolerated when substituting (default ``max(10, len(items) // 100)``).
        masks: the cue mask of ``items[i]`` (:class:`MaskSource`), or None.
    """

    def __init__(
        self,
        items: Sequence[ImageItem],
        source: ImageSource,
        substitute_bad: bool = False,
        max_bad: Optional[int] = None,
        masks: Optional[ImageSource] = None,
    ):
        if len(source) != len(items) or (masks is not None and len(masks) != len(items)):
            raise ValueError(f"image source has {len(source)} images but there are {len(items)} items")
        self.masks = masks
        self.items = list(items)
        self.source = source
        self.substitute_bad = substitute_bad
        self.max_bad = max(10, len(items) // 100) if max_bad is None else max_bad
        self.bad = torch.zeros(len(items), dtype=torch.uint8).share_memory_()  # 1 = unreadable (all workers see it)
        self.substitutions = torch.zeros(1, dtype=torch.int64).share_memory_()  # approximate across workers
        self._same_pid: Dict[int, List[int]] = {}
        for i, it in enumerate(self.items):
            self._same_pid.setdefault(it.pid, []).append(i)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, object]:
        item = self.items[index]
        j, image = self._load(index)
        out = {"images": image, "pids": item.pid, "camids": item.camid, "index": index}
        if self.masks is not None:
            out["cue_masks"] = self.masks[j]  # the mask of the image actually returned (a substitute's own)
        return out

    def bad_files(self) -> List[str]:
        """Paths of the images found unreadable so far."""
        return [self.items[i].path for i in torch.nonzero(self.bad).flatten().tolist()]

    def _load(self, index: int) -> Tuple[int, torch.Tensor]:
        """(index of the image returned, its pixels): ``index`` itself or a substitute of the same identity."""
        if not self.substitute_bad:
            return index, self.source[index]
        group = self._same_pid[self.items[index].pid]
        start = group.index(index)
        for j in group[start:] + group[:start]:
            if self.bad[j]:
                continue
            try:
                image = self.source[j]
            except DatasetError as e:
                self._mark_bad(j, e)
                continue
            if j != index:
                self.substitutions += 1
            return j, image
        raise DatasetError(
            f"no readable image left for identity {self.items[index].pid}: every one of its {len(group)} images "
            f"failed to load ({', '.join(self.items[j].path for j in group)})"
        )

    def _mark_bad(self, j: int, error: DatasetError) -> None:
        self.bad[j] = 1
        num_bad = int(self.bad.sum())
        logger.warning("unreadable training image, substituting another image of the same identity: %s", error)
        if num_bad > self.max_bad:
            raise DatasetError(
                f"{num_bad} training images are unreadable (more than the {self.max_bad} tolerated); "
                f"the data looks broken: {', '.join(self.bad_files()[:20])}"
            )


def build_train_loader(cfg: DataConfig, items: Sequence[ImageItem], seed: int = 0, rank: int = 0,
                       world_size: int = 1, masks: Optional[Sequence[str]] = None) -> DataLoader:
    """PK-sampled training loader (J = ``cfg.ids_per_batch`` ids x K = ``cfg.instances`` images per batch).

    Under DDP each of the ``world_size`` processes gets every ``world_size``-th batch of the same epoch plan.

    Call ``loader.batch_sampler.set_epoch(epoch)`` before each epoch for reproducible, per-epoch shuffles.
    Bad images are substituted (module docstring); ``loader.dataset.substitutions`` counts the substitutions.
    ``masks``: the cue-mask file of each item (batches then hold ``cue_masks`` (B, H, W) bool), or None.
    """
    mask_source = MaskSource(masks, cfg.height, cfg.width) if masks is not None else None
    dataset = ReIDImageDataset(items, build_image_source(cfg, items), substitute_bad=True, masks=mask_source)
    sampler = PKSampler([it.pid for it in items], cfg.ids_per_batch, cfg.instances, seed=seed, rank=rank,
                        world_size=world_size)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def build_test_loader(cfg: DataConfig, items: Sequence[ImageItem], occlusion=None, fill: str = "mean") -> DataLoader:
    """In-order evaluation loader, ``cfg.test_batch_size`` images per batch (last batch may be smaller); with an
    ``occlusion`` (a :class:`~esreid.data.occlusion.Condition` that occludes) each image is occluded under it, filled
    as ``fill`` says (``test.occlusion_fill``)."""
    source = build_image_source(cfg, items)
    if occlusion is not None and occlusion.occludes:
        from esreid.data.occlusion import OccludedSource, fill_value

        source = OccludedSource(source, [it.path for it in items], occlusion, fill_value(fill, cfg.mean))
    return ordered_loader(cfg, ReIDImageDataset(items, source))


def ordered_loader(cfg: DataConfig, dataset: Dataset) -> DataLoader:
    """In-order loader over ``dataset`` (items are batch dicts as above), ``cfg.test_batch_size`` per batch, with
    ``cfg.workers`` workers: the evaluation loader, also used for images that are not a dataset split."""
    return DataLoader(
        dataset,
        batch_size=cfg.test_batch_size,
        shuffle=False,
        num_workers=cfg.workers,
        pin_memory=torch.cuda.is_available(),
        # each iterator draws its workers' base seed from this generator instead of the global torch RNG: an
        # evaluation leaves the training's RNGs as they were, so a resumed run that takes an evaluation from
        # metrics.jsonl instead of re-running it continues with the same global RNG state
        generator=torch.Generator(),
    )
