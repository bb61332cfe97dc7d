"""Checks run before training starts that the config alone cannot answer: files the config names (before the dataset
scan: :func:`check_files`), and what needs the scanned dataset (right after the scan, before any model is built or
step is taken). The config itself is checked when it is loaded (:mod:`esreid.config`). Each problem is a one-line
:class:`~esreid.errors.ConfigError` or :class:`~esreid.errors.DatasetError` naming the key or the file."""

from __future__ import annotations

import os
from typing import Any

from esreid.config import invalid
from esreid.data.base import DatasetError, ReIDDataset
from esreid.data.sampler import PKSampler
from esreid.data.transforms import decode_resize


def check_files(cfg: Any) -> None:
    """The ImageNet weights of a fresh run can be loaded: a local ``model.pretrained`` file exists and
    ``torchvision:`` weights fit ``model.backbone`` (a URL is fetched when the model is built)."""
    from esreid.models.backbones import imagenet_of
    from esreid.models.backbones.weights import problem_before_training

    backbone = cfg.model.backbone
    problem = problem_before_training(cfg.model.pretrained, backbone, imagenet_of(backbone))
    if problem:
        raise invalid(cfg, "model.pretrained", problem)


def check_training_data(cfg: Any, dataset: ReIDDataset) -> None:
    """The train split can fill a PK batch of ``data.ids_per_batch`` identities, at least once per epoch."""
    ids = dataset.num_train_pids
    if ids < cfg.data.ids_per_batch:
        raise invalid(cfg, "data.ids_per_batch", f"{cfg.data.ids_per_batch} identities per batch but the train "
                                                 f"split of {cfg.data.name} has {ids}; lower it")
    sampler = PKSampler([it.pid for it in dataset.train], cfg.data.ids_per_batch, cfg.data.instances)
    if sampler.num_batches() == 0:
        raise invalid(cfg, "data.ids_per_batch", f"the train split ({ids} identities, {len(dataset.train)} images) "
                                                 f"gives no full batch of {cfg.data.ids_per_batch} x "
                                                 f"{cfg.data.instances}; lower data.ids_per_batch or data.instances")


def check_test_data(cfg: Any, dataset: ReIDDataset) -> None:
    """Every query / gallery file exists and the first of each split decodes, so that an evaluation cannot fail on a
    missing or unreadable test image after hours of training."""
    for split in ("query", "gallery"):
        items = getattr(dataset, split)
        missing = [it.path for it in items if not os.path.isfile(it.path)]
        if missing:
            raise DatasetError(f"{cfg.data.name}: {len(missing)} {split} image(s) are missing, e.g. {missing[0]}; "
                               "the evaluation needs every one (restore them or fix data.root)")
        if items:
            decode_resize(items[0].path, cfg.data.height, cfg.data.width)
