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
from esreid.data.transforms import check_image_header, decode_resize
from esreid.evaluation.rerank import DEFAULT_BUDGET_MB, RerankMemoryError, working_bytes


def check_files(cfg: Any) -> None:
    """The ImageNet weights of a fresh run can be loaded: a local ``model.pretrained`` file exists and
    ``torchvision:`` weights fit ``model.backbone`` (a URL is fetched when the model is built); another toolkit's
    checkpoint is recognised and fits ``model.backbone`` (:mod:`esreid.models.importers`)."""
    from esreid.models import importers
    from esreid.models.backbones import imagenet_of
    from esreid.models.backbones.weights import problem_before_training

    backbone = cfg.model.backbone
    problem = (problem_before_training(cfg.model.pretrained, backbone, imagenet_of(backbone))
               or importers.problem_before_training(cfg.model.pretrained, cfg.model))
    if problem:
        raise invalid(cfg, "model.pretrained", problem)


def check_training_data(cfg: Any, dataset: ReIDDataset) -> None:
    """The train split can fill a PK batch of ``data.ids_per_batch`` identities, at least once per epoch."""
    ids = dataset.num_train_pids
    if ids < cfg.data.ids_per_batch:
        names = ", ".join(e.key for e in cfg.train_sets())
        raise invalid(cfg, "data.ids_per_batch", f"{cfg.data.ids_per_batch} identities per batch but the train "
                                                 f"split of {names} has {ids}; lower it")
    sampler = PKSampler([it.pid for it in dataset.train], cfg.data.ids_per_batch, cfg.data.instances)
    if sampler.num_batches() == 0:
        raise invalid(cfg, "data.ids_per_batch", f"the train split ({ids} identities, {len(dataset.train)} images) "
                                                 f"gives no full batch of {cfg.data.ids_per_batch} x "
                                                 f"{cfg.data.instances}; lower data.ids_per_batch or data.instances")


def check_test_data(cfg: Any, dataset: ReIDDataset, name: str) -> None:
    """Every query / gallery file of the test set ``name`` exists and has a readable image header
    (:func:`check_image_header`: format, size, structure; no pixels decoded), and the first of each split decodes, so
    that an evaluation cannot fail on a missing or unreadable test image after hours of training. A Market-size test
    set (19,732 images) takes seconds (README, "When things go wrong")."""
    for split in ("query", "gallery"):
        items = getattr(dataset, split)
        missing = [it.path for it in items if not os.path.exists(it.path)]
        if missing:
            raise DatasetError(f"{name}: {len(missing)} {split} image(s) are missing, e.g. {missing[0]}; "
                               "the evaluation needs every one (restore them or fix data.root)")
        for it in items:
            check_image_header(it.path)
        if items:
            decode_resize(items[0].path, cfg.data.height, cfg.data.width)
    check_rerank_memory(cfg, dataset)


def check_rerank_memory(cfg: Any, dataset: ReIDDataset) -> None:
    """With ``test.rerank``, the memory budget holds what k-reciprocal re-ranking of the whole query and gallery
    keeps (:func:`~esreid.evaluation.rerank.working_bytes`), for the protocols that rank the whole gallery (the
    sampled galleries of CUHK03 single-gallery-shot and VehicleID are checked when they are drawn)."""
    if not cfg.test.rerank or dataset.protocol_name(cfg.data.args) != "market":
        return
    budget = cfg.test.protocol_args.get("memory_budget_mb", DEFAULT_BUDGET_MB)
    try:
        working_bytes(len(dataset.query), len(dataset.gallery), budget)
    except RerankMemoryError as e:
        raise invalid(cfg, "test.rerank", f"{e}: raise test.protocol_args.memory_budget_mb or set "
                                          "test.rerank=false") from None
