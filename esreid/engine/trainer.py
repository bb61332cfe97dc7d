"""The trainer: one loop for every method (a method is a model file plus a config).

Per iteration: PK batch -> device -> batched augmentation -> ``model(images, pids)`` returns a dict of loss terms ->
their sum is back-propagated -> optimiser and per-iteration lr schedule step. Periodic evaluation through the dataset's
protocol, checkpoints (``last.pth`` always, ``epoch_XXX.pth`` every ``checkpoint_period``), console progress bar and a
JSONL metrics file (``metrics.jsonl``) in ``output_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from tqdm import tqdm

from esreid.config import Config, dump_yaml, to_dict
from esreid.data.base import build_dataset
from esreid.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    set_rng_state,
)
from esreid.engine.distributed import barrier, init_distributed
from esreid.engine.evaluator import autocast, evaluate_model
from esreid.engine.schedule import build_optimizer, build_scheduler
from esreid.erasing.besm import erased_loss_probe
from esreid.models import build_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"config key 'device': {name!r} requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Builds dataset, loaders, model, optimiser and schedule from a :class:`Config` and runs training.

    Args:
        cfg: the validated config.
        resume: ``None`` (fresh run; refuses to overwrite an existing run in ``cfg.output_dir``), ``"auto"``
            (``<output_dir>/last.pth``) or a checkpoint path.
        progress: show a tqdm progress bar.
        log: function receiving console lines.
    """

    def __init__(self, cfg: Config, resume: Optional[str] = None, progress: bool = True,
                 log: Callable[[str], None] = print):
        from esreid.data.loader import build_train_loader
        from esreid.data.transforms import TrainAugment

        self.device = resolve_device(cfg.device)
        self.dist = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        main = self.dist.is_main
        self.cfg, self.progress = cfg, progress and main
        self.log = log if main else (lambda line: None)
        seed_everything(cfg.seed)  # the same on every rank while the model is built (see below)
        self.out = cfg.output_dir
        last = os.path.join(self.out, "last.pth")
        if resume is None and os.path.exists(last):
            raise FileExistsError(
                f"output_dir {self.out!r} already holds a run ({last}); pass --resume auto to continue it "
                "or choose another output_dir (nothing was overwritten)"
            )
        self.dataset = build_dataset(cfg.data.name, cfg.data.root, **cfg.data.args)
        self.log(self.dataset.summary())
        # resuming replaces every weight: skip the ImageNet weights (a moved file or offline URL must not stop it)
        model_cfg = cfg.model if resume is None else dataclasses.replace(cfg.model, pretrained="")
        self.model = build_model(model_cfg, self.dataset.num_train_pids).to(self.device)
        if cfg.solver.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Under DDP the model's own generators (BDB's DropBlock region, BESM coin flips) start alike on every rank,
        # so a DropBlock region is drawn once per step for the whole global batch (spec §2.2); augmentation and the
        # global RNGs differ per rank. The PK plan uses cfg.seed on every rank.
        seed = cfg.seed + self.dist.rank
        seed_everything(seed)
        self.train_loader = build_train_loader(cfg.data, self.dataset.train, seed=cfg.seed, rank=self.dist.rank,
                                               world_size=self.dist.world_size)
        self.augment = TrainAugment(cfg.data, seed=seed)
        self.probe_generator = torch.Generator().manual_seed(seed)
        self.optimizer = build_optimizer(self.model, cfg.solver)
        self.iters_per_epoch = len(self.train_loader)
        if self.iters_per_epoch == 0:
            raise ValueError(
                f"data: the train split has too few identities for one PK batch of {cfg.data.ids_per_batch} ids "
                f"x {cfg.data.instances} images ({self.dataset.num_train_pids} ids)"
            )
        self.scheduler = build_scheduler(self.optimizer, cfg.solver, self.iters_per_epoch)
        # fp16 gradients underflow without loss scaling, on the CPU as on CUDA (bf16 has fp32's range: no scaling)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.solver.amp == "fp16")
        self.start_epoch = 0
        self.history: list = []
        if resume is not None:
            self._resume(last if resume == "auto" else resume)
        # the module trained: DDP-wrapped under torchrun (self.model stays the plain module for eval and checkpoints)
        self.net = self.model
        if self.dist.enabled:
            if cfg.solver.sync_bn and self.device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.writer = None
        if main:
            os.makedirs(self.out, exist_ok=True)
            _atomic_write_text(os.path.join(self.out, "config.yaml"), dump_yaml(cfg))
            self._truncate_log()
            if cfg.tensorboard:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard extra

                self.writer = SummaryWriter(os.path.join(self.out, "tensorboard"))

    # ------------------------------------------------------------------------------------------------------------
    def _resume(self, path: str) -> None:
        # read to the CPU: RNG states must be CPU ByteTensors; the optimiser state follows its parameters' device
        state = load_checkpoint(path, map_location="cpu")
        if state.get("optimizer") is None:
            raise CheckpointError(f"{path}: holds model weights only; resuming needs a full training checkpoint")
        load_model_weights(self.model, state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        for name, gen in self.generators().items():
            if name in state.get("generators", {}):
                gen.set_state(state["generators"][name])
        self.start_epoch = int(state["epoch"])
        self.log(f"=> resumed from {path} at epoch {self.start_epoch}")

    def generators(self) -> Dict[str, torch.Generator]:
        """Every RNG besides the global ones: augmentation and any module's ``generator`` (e.g. BESM coin flips),
        saved in checkpoints so a resumed run draws the same numbers as an uninterrupted one."""
        gens = {"augment": self.augment.generator, "probe": self.probe_generator}
        for name, module in self.model.named_modules():
            if isinstance(getattr(module, "generator", None), torch.Generator):
                gens[f"model.{name}" if name else "model"] = module.generator
        return gens

    def _truncate_log(self) -> None:
        """Drop metrics.jsonl records of epochs after ``start_epoch`` (left by an interrupted run): they are redone."""
        path = os.path.join(self.out, "metrics.jsonl")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                kept = [line for line in f if _record_epoch(line) <= self.start_epoch]
            _atomic_write_text(path, "".join(kept))

    def _log_json(self, record: Dict[str, Any]) -> None:
        """Append ``record`` to metrics.jsonl (and its numbers to TensorBoard as ``<type>/<key>``)."""
        if not self.dist.is_main:
            return
        with open(os.path.join(self.out, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record.get("iter", record["epoch"])
            for key, value in record.items():
                if isinstance(value, float):
                    self.writer.add_scalar(f"{record['type']}/{key}", value, step)
            self.writer.flush()

    def _checkpoint(self, epoch: int, metrics: Dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        kwargs = dict(model=self.model, epoch=epoch, config=to_dict(self.cfg), optimizer=self.optimizer,
                      scheduler=self.scheduler, scaler=self.scaler, metrics=metrics, generators=self.generators())
        save_checkpoint(os.path.join(self.out, "last.pth"), **kwargs)
        period = self.cfg.checkpoint_period
        if period and epoch % period == 0:
            save_checkpoint(os.path.join(self.out, f"epoch_{epoch:03d}.pth"), **kwargs)

    # ------------------------------------------------------------------------------------------------------------
    def train_step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """One optimisation step on a loader batch; returns the loss terms as floats."""
        images = self.augment(batch["images"].to(self.device, non_blocking=True))
        if self.cfg.solver.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pids = batch["pids"].to(self.device, non_blocking=True)
        diag = self.cfg.diagnostics
        probe = None
        if diag.erased_loss:  # ES-Net Fig. 3: the loss on BESM-erased copies, before this step's update
            probe = erased_loss_probe(self.model, diag.layer, images, pids, diag.erase_ratio, diag.erase_prob,
                                      self.probe_generator)
        with autocast(self.device, self.cfg.solver.amp):
            terms = self.net(images, pids)
        loss = sum(t.float() for t in terms.values())
        if not torch.isfinite(loss):
            values = {k: float(v) for k, v in terms.items()}
            raise FloatingPointError(f"non-finite loss {values}; lower solver.lr or disable solver.amp "
                                     "(the last checkpoint was left untouched)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.solver.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.solver.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["loss"] = float(loss.detach())
        if probe is not None:
            out["erased_loss"] = probe
        return out

    def evaluate(self) -> Dict[str, float]:
        return evaluate_model(self.model, self.dataset, self.cfg, self.device)

    def train(self) -> Dict[str, float]:
        """Run the remaining epochs; returns the last evaluation's metrics."""
        cfg = self.cfg
        metrics: Dict[str, float] = {}
        sampler = self.train_loader.batch_sampler
        for epoch in range(self.start_epoch, cfg.solver.epochs):
            self.model.train()
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            sums: Dict[str, float] = {}
            start = time.perf_counter()
            bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{cfg.solver.epochs}", leave=False,
                       disable=not self.progress, dynamic_ncols=True)
            for it, batch in enumerate(bar):
                terms = self.train_step(batch)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                step = epoch * self.iters_per_epoch + it + 1
                if cfg.log_period and step % cfg.log_period == 0:
                    self._log_json({"type": "train", "epoch": epoch + 1, "iter": step,
                                    "lr": self.optimizer.param_groups[0]["lr"], **terms})
                bar.set_postfix(loss=f"{terms['loss']:.3f}")
            seconds = time.perf_counter() - start
            n = self.iters_per_epoch
            record = {"type": "epoch", "epoch": epoch + 1, "seconds": seconds,
                      "images_per_second": n * cfg.data.ids_per_batch * cfg.data.instances * self.dist.world_size
                      / seconds,
                      "lr": self.optimizer.param_groups[0]["lr"], **{k: v / n for k, v in sums.items()}}
            if hasattr(self.model, "stats"):
                record.update({k: float(v) for k, v in self.model.stats().items()})
            self._log_json(record)
            self.log(_format_epoch(record))
            last = epoch + 1 == cfg.solver.epochs
            if self.dist.is_main and (last or (cfg.test.eval_period and (epoch + 1) % cfg.test.eval_period == 0)):
                metrics = self.evaluate()
                self._log_json({"type": "eval", "epoch": epoch + 1, **metrics})
                self.log(format_metrics(metrics, f"epoch {epoch + 1}"))
                self.history.append({"epoch": epoch + 1, **metrics})
            self._checkpoint(epoch + 1, metrics)
            barrier(self.dist)  # the other processes wait for rank 0's evaluation and checkpoint
        if metrics:
            _atomic_write_text(os.path.join(self.out, "results.json"), json.dumps(metrics, indent=2))
        return metrics


def _format_epoch(r: Dict[str, Any]) -> str:
    losses = "  ".join(f"{k}={v:.3f}" for k, v in r.items()
                       if k not in ("type", "epoch", "seconds", "images_per_second", "lr") and isinstance(v, float))
    return (f"epoch {r['epoch']:3d}  {r['seconds']:.1f}s  {r['images_per_second']:.0f} img/s  lr={r['lr']:.2e}  "
            f"{losses}")


def format_metrics(metrics: Dict[str, Any], title: str = "") -> str:
    """One line: mAP, mINP and CMC ranks in percent (std where the protocol reports one)."""
    parts = []
    for key in ("mAP", "mINP", "R1", "R5", "R10", "R20"):
        if key in metrics and isinstance(metrics[key], (int, float)) and not math.isnan(metrics[key]):
            std = metrics.get(f"{key}_std")
            parts.append(f"{key} {100 * metrics[key]:.1f}" + (f"±{100 * std:.1f}" if std is not None else ""))
    return f"{title}: " + "  ".join(parts) if title else "  ".join(parts)


def _record_epoch(line: str) -> float:
    """The epoch of a metrics.jsonl line; infinity for a line cut short by a crash."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)

