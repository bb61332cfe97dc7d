"""The trainer: one loop for every method (a method is a model file plus a config).

Per iteration: PK batch -> device -> batched augmentation -> ``model(images, pids)`` (the model's ``forward_train``)
returns a dict of loss terms -> their sum is back-propagated -> optimiser and per-iteration lr schedule step.
Everything else is a hook (:mod:`esreid.engine.hooks`): the train / epoch records, ``last.pth`` and ``epoch_XXX.pth``
checkpoints, the periodic evaluation through the dataset's protocol, ``metrics.jsonl``, TensorBoard, console lines and
the diagnostics the config switches on. The trainer talks to the model only through the
:class:`~esreid.models.base.ReIDModel` contract.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from esreid.config import Config, dump_yaml, to_dict
from esreid.console import RunLog, progress
from esreid.engine import hooks as H
from esreid.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from esreid.engine.compile import place_model
from esreid.engine.distributed import all_gather, barrier, init_distributed
from esreid.engine.evaluator import autocast
from esreid.engine.guard import DivergenceGuard
from esreid.engine.preflight import check_files, check_test_data, check_training_data
from esreid.engine.resume import check_resume_config, describe, restore_solver
from esreid.engine.schedule import build_optimizer, build_scheduler, build_sgd
from esreid.engine.session import resolve_device, seed_everything
from esreid.engine.testsets import CaseResult, build_cases, evaluate_run, open_datasets
from esreid.engine.threads import apply_threads
from esreid.errors import ConfigError
from esreid.evaluation.metric_keys import declared
from esreid.files import atomic_write, check_writable, remove_orphans
from esreid.models import build_model


class Trainer:
    """Builds dataset, loaders, model, optimiser, schedule and hooks from a :class:`Config` and runs training.

    Args:
        cfg: the validated config.
        resume: ``None`` (fresh run; refuses to overwrite an existing run in ``cfg.output_dir``), ``"auto"``
            (``<output_dir>/last.pth``) or a checkpoint path.
        progress: show a tqdm progress bar (only where stderr is a terminal; one line per epoch otherwise).
        log: function receiving console lines; on the main process every line also goes to ``<output_dir>/log.txt``.
        hooks: extra hooks, run after the default ones.
        allow_changes: config keys (or sections) a resumed run may change although they change the run
            (:mod:`esreid.engine.resume`); any other such difference with the checkpoint's config is refused.
        command: the command line that started the run, without ``--resume`` (e.g. ``esreid train --config c.yaml``);
            hints on how to continue (Ctrl-C, divergence) extend it. Default: ``esreid train --config
            <output_dir>/config.yaml``.
    """

    def __init__(self, cfg: Config, resume: Optional[str] = None, progress: bool = True,
                 log: Callable[[str], None] = print, hooks: Optional[List[H.HookBase]] = None,
                 allow_changes: Sequence[str] = (), command: Optional[str] = None):
        self.cfg = cfg
        self.build_runtime(progress, log, command)
        checkpoint = self.check_start(resume, allow_changes)  # before any data is read
        self.open_output(resume)
        self.build_dataset(fresh=resume is None)
        self.build_model(pretrained=resume is None)
        self.build_loader()
        self.build_optimizer()
        self.log_setup()
        self.build_hooks(hooks)
        if checkpoint is not None:
            self.resume(*checkpoint)
        self.build_train_module()
        if self.dist.is_main:
            os.makedirs(self.out, exist_ok=True)
            atomic_write(os.path.join(self.out, "config.yaml"), dump_yaml(cfg))

    # ------------------------------------------------------------------------------------------------------------
    def build_runtime(self, progress: bool, log: Callable[[str], None], command: Optional[str]) -> None:
        """Threads, device, processes (DDP under torchrun), the console, the command that started the run."""
        cfg = self.cfg
        apply_threads(cfg)
        self.device = resolve_device(cfg.device)
        self.dist = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.progress = progress and self.dist.is_main
        self.log = log if self.dist.is_main else (lambda line: None)
        self.out = cfg.output_dir
        self.command = command or f"esreid train --config {shlex.quote(os.path.join(self.out, 'config.yaml'))}"

    def check_start(self, resume: Optional[str],
                    allow_changes: Sequence[str]) -> Optional[Tuple[str, Dict[str, Any], List[Any]]]:
        """Refuse to overwrite a run, or ``--allow-changes`` without ``--resume``; read the checkpoint to resume and
        check its config (:meth:`_read_checkpoint`). Returns it, or None for a fresh run."""
        last = os.path.join(self.out, "last.pth")
        if resume is None and os.path.exists(last):
            raise FileExistsError(
                f"output_dir {self.out!r} already holds a run ({last}); pass --resume auto to continue it "
                "or choose another output_dir (nothing was overwritten)"
            )
        if resume is None and allow_changes:
            raise ConfigError("--allow-changes names what a resumed run may change; add --resume auto (or a "
                              "checkpoint path)")
        return self._read_checkpoint(last if resume == "auto" else resume, allow_changes) if resume else None

    def open_output(self, resume: Optional[str]) -> None:
        """On the main process: ``output_dir`` writable, ``log.txt`` opened, temporary files of interrupted writes
        removed."""
        if not self.dist.is_main:
            return
        from esreid import __version__

        check_writable(self.out, "output_dir")
        self.log = RunLog(self.log, os.path.join(self.out, "log.txt"))
        self.log.start(f"esreid {__version__} train: output_dir {self.out}" + (f", resuming {resume}" if resume
                                                                                else ""))
        for orphan in remove_orphans(self.out):
            self.log(f"removed {orphan} (a temporary file left by an interrupted write)")

    def build_dataset(self, fresh: bool) -> None:
        """Scan the training datasets and the test sets (:func:`~esreid.engine.testsets.open_datasets`) and check
        they can train (and, on the main process, be evaluated); a ``fresh`` run first checks the files the config
        names."""
        cfg = self.cfg
        if fresh:
            check_files(cfg)
        # every training dataset and test set is read (and a missing one reported) before the model is built
        self.datasets = open_datasets(cfg)
        self.dataset = self.datasets.train
        self.log(self.datasets.summary())
        check_training_data(cfg, self.dataset)
        if self.dist.is_main:
            for test_set in self.datasets.test_sets:
                check_test_data(cfg, test_set.dataset, test_set.key)
        self.test_cases = build_cases(cfg, self.datasets.test_sets)

    def build_model(self, pretrained: bool) -> None:
        """The model, placed on the device (amp / compile / channels_last); without the ImageNet weights when not
        ``pretrained`` (resuming replaces every weight: a moved file or offline URL must not stop it)."""
        cfg = self.cfg
        seed_everything(cfg.seed)  # the same on every rank while the model is built (see below)
        model_cfg = cfg.model if pretrained else dataclasses.replace(cfg.model, pretrained="")
        model = build_model(model_cfg, self.dataset.num_train_pids, cfg.test, log=self.log)
        model.set_input_normalization(cfg.data.mean, cfg.data.std)
        self.model = place_model(model, cfg.solver, self.device)

    def build_loader(self) -> None:
        """The PK loader and the batched augmentation. Under DDP the model's own generators (BDB's DropBlock region,
        BESM coin flips) start alike on every rank, so a DropBlock region is drawn once per step for the whole global
        batch (docs/methods.md §2.2); augmentation and the global RNGs differ per rank. The PK plan uses cfg.seed on
        every rank."""
        from esreid.data.loader import build_train_loader
        from esreid.data.transforms import TrainAugment

        cfg = self.cfg
        self.seed = cfg.seed + self.dist.rank
        seed_everything(self.seed)
        # the model's declared train inputs (ES-Net's oracle erasing: the dataset's cue masks) load with the images
        masks = self.dataset.cue_masks(self.dataset.train) if "cue_masks" in self.model.train_inputs else None
        self.train_loader = build_train_loader(cfg.data, self.dataset.train, seed=cfg.seed, rank=self.dist.rank,
                                               world_size=self.dist.world_size, masks=masks)
        self.augment = TrainAugment(cfg.data, seed=self.seed)

    def build_optimizer(self) -> None:
        """Optimiser, per-iteration lr schedule and the fp16 loss scaler."""
        cfg = self.cfg
        self.optimizer = build_optimizer(self.model, cfg.solver)
        self.sgd = build_sgd(self.model)  # the model's sgd_params (AGW's centres): stateless, not checkpointed
        self.iters_per_epoch = len(self.train_loader)
        self.global_batch_size = cfg.data.ids_per_batch * cfg.data.instances * self.dist.world_size
        self.scheduler = build_scheduler(self.optimizer, cfg.solver, self.iters_per_epoch)
        # fp16 gradients underflow without loss scaling, on the CPU as on CUDA (bf16 has fp32's range: no scaling)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.solver.amp == "fp16")

    def log_setup(self) -> None:
        cfg = self.cfg
        params, threads = sum(p.numel() for p in self.model.parameters()), torch.get_num_threads()
        self.log(f"model {cfg.model.name} ({cfg.model.backbone}, {params / 1e6:.2f} M parameters) on {self.device}, "
                 f"{threads} intra-op thread{'s' * (threads != 1)} (threads: {cfg.threads}), "
                 f"{self.dist.world_size} process(es); "
                 f"{cfg.solver.epochs} epochs x {self.iters_per_epoch} iterations of {self.global_batch_size} images")

    def build_hooks(self, extra: Optional[List[H.HookBase]]) -> None:
        """The run's state and its hooks: the default ones, then ``extra``."""
        self.state = H.TrainState()
        self.start_epoch = 0
        self.resumed_epochs: Optional[int] = None  # solver.epochs of the run a resumed checkpoint comes from
        self.last_checkpoint: Optional[Tuple[str, int]] = None  # (path, epoch) of the newest checkpoint of this run
        self.rank_states: List[Dict[str, Any]] = []  # under DDP: every rank's RNGs at the end of the epoch
        self.history: List[Dict[str, Any]] = []
        self.hooks: List[H.HookBase] = []
        self.register_hooks(self.default_hooks() + list(extra or []))

    def build_train_module(self) -> None:
        """The module trained: DDP-wrapped under torchrun (``self.model`` stays the plain module for eval and
        checkpoints)."""
        self.net = self.model
        if self.dist.enabled:
            if self.cfg.solver.sync_bn and self.device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    # ------------------------------------------------------------------------------------------------------------
    def default_hooks(self) -> List[H.HookBase]:
        """Diagnostics (before the step), the train / epoch records, the divergence guard (before the checkpoint: a
        diverged epoch is not saved), then checkpoint and evaluation (checkpoint first, so an evaluation that fails
        loses no epoch); record writers on the main process only (``metrics.jsonl`` first: it drops the records of
        interrupted epochs before a resumed run adds any)."""
        cfg = self.cfg
        records = os.path.join(self.out, "metrics.jsonl")
        hooks: List[H.HookBase] = [*H.diagnostic_hooks(cfg, self.seed), H.TrainLog(cfg.log_period),
                                   DivergenceGuard(cfg.guard)]
        if self.dist.is_main:
            hooks += [H.JSONLWriter(records), H.CheckpointHook(self.out, cfg.checkpoint),
                      H.EvalHook(cfg.test.eval_period, records)]
            if cfg.checkpoint.best:
                best_on = cfg.checkpoint.best_on or self.test_cases[0].name  # the config check saw it is a case
                case = next(c for c in self.test_cases if c.name == best_on)
                best = declared(case.test_set.dataset.protocol).expand(cfg.test.ranks)
                metric = next(m for m in best if m.key == cfg.checkpoint.best)  # the config check saw it declared
                hooks.append(H.BestCheckpointHook(self.out, metric, cfg.checkpoint.full, cfg.checkpoint.best_on,
                                                  records))
            hooks.append(H.ConsoleWriter())
            if cfg.report:
                from esreid.engine.reporting import ReportHook

                hooks.append(ReportHook())
            if cfg.tensorboard:
                hooks.append(H.TensorBoardWriter(os.path.join(self.out, "tensorboard")))
        return hooks

    def register_hooks(self, hooks: List[H.HookBase]) -> None:
        for hook in hooks:
            hook.trainer = self
        self.hooks.extend(hooks)

    def emit(self, record: Dict[str, Any], results: Optional[Sequence[CaseResult]] = None) -> None:
        """Send a record (``{"type": ..., "epoch": ..., ...}``) to every hook's ``on_record``; an evaluation's record
        with its test cases' ``results`` (the features each ranked) also to its ``on_eval``, hook by hook."""
        for hook in self.hooks:
            hook.on_record(record)
            if results is not None:
                hook.on_eval(record, results)

    def _call(self, event: str) -> None:
        for hook in self.hooks:
            getattr(hook, event)()

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------------------------------------------------------
    def generators(self) -> Dict[str, torch.Generator]:
        """Every RNG besides the global ones: augmentation, the model's own (``model.generators()``: BESM coin flips,
        DropBlock regions, mixing partners) and the hooks', saved in checkpoints so a resumed run draws the same
        numbers as an uninterrupted one."""
        gens = {"augment": self.augment.generator}
        gens.update({f"model.{k}": g for k, g in self.model.generators().items()})
        for hook in self.hooks:
            gens.update({f"hook.{k}": g for k, g in hook.generators().items()})
        return gens

    def rank_state(self) -> Dict[str, Any]:
        """This process's RNG states: the global ones and :meth:`generators` (under DDP each rank has its own)."""
        return {"rng": rng_state(), "generators": {k: g.get_state() for k, g in self.generators().items()}}

    def save_checkpoint(self, path: str, full: bool = True, epoch: Optional[int] = None) -> None:
        """Save the run at the end of ``epoch`` (1-based; default: the current epoch): everything needed to resume
        (``full``; under DDP with every rank's RNG states, gathered at the end of the epoch), or the model weights with
        the epoch, config, metrics and class count only (what eval / extract / export read)."""
        resume = {}
        if full:
            resume = dict(optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                          generators=self.generators(), hooks=self.hook_states(),
                          ranks=self.rank_states if self.dist.enabled else [])
        epoch = self.state.epoch + 1 if epoch is None else epoch
        save_checkpoint(path, model=self.model, epoch=epoch, config=to_dict(self.cfg),
                        metrics=self.state.metrics, num_classes=self.model.num_classes, **resume)

    def hook_states(self) -> Dict[str, Dict[str, Any]]:
        """``{hook.name: hook.state_dict()}`` of the hooks with state; a hook with state needs a name of its own."""
        states: Dict[str, Dict[str, Any]] = {}
        for hook in self.hooks:
            state = hook.state_dict()
            if state:
                if not hook.name or hook.name in states:
                    raise ValueError(f"{type(hook).__name__} has state to checkpoint but no name of its own "
                                     f"({hook.name!r}): set its class attribute 'name'")
                states[hook.name] = state
        return states

    def _read_checkpoint(self, path: str, allow_changes: Sequence[str]) -> Tuple[str, Dict[str, Any], List[Any]]:
        """Load the checkpoint to resume and check its config against this one (:mod:`esreid.engine.resume`)."""
        if not os.path.isfile(path) and path == os.path.join(self.out, "last.pth"):
            raise CheckpointError(f"--resume auto: output_dir {self.out} holds no run to continue ({path} not found); "
                                  "start without --resume, or pass the path of a checkpoint")
        # read to the CPU: RNG states must be CPU ByteTensors; the optimiser state follows its parameters' device
        state = load_checkpoint(path, map_location="cpu")
        if state.get("optimizer") is None:
            raise CheckpointError(f"{path}: holds model weights only; resuming needs a full training checkpoint")
        changes = check_resume_config(path, state.get("config"), self.cfg, allow_changes)
        return path, state, changes

    def resume(self, path: str, state: Dict[str, Any], changes: List[Any]) -> None:
        """Continue from a checkpoint read by :meth:`check_start`: weights, optimiser, schedule, scaler, every RNG
        (under DDP this rank's), the hooks' state, the metrics and the epoch; then the hooks' ``after_resume``."""
        load_model_weights(self.model, state, path)
        self.start_epoch = int(state["epoch"])
        saved_solver = (state.get("config") or {}).get("solver", {})
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        if saved_solver.get("optimizer", self.cfg.solver.optimizer) == self.cfg.solver.optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            self.log(f"=> solver.optimizer changed to {self.cfg.solver.optimizer}: its state starts afresh")
        self.scheduler.load_state_dict(state["scheduler"])
        restore_solver(self.optimizer, self.scheduler, fresh, self.start_epoch * self.iters_per_epoch)
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        own = self._own_rank_state(state)
        set_rng_state(own["rng"])
        for name, gen in self.generators().items():
            if name in own.get("generators", {}):
                gen.set_state(own["generators"][name])
        saved = state.get("hooks", {})
        for hook in self.hooks:  # checkpoints before hooks had names keyed the state by class name
            key = next((k for k in (hook.name, type(hook).__name__) if k and k in saved), None)
            if key is not None:
                hook.load_state_dict(saved[key])
        self.state.metrics = dict(state.get("metrics") or {})
        self.resumed_epochs = saved_solver.get("epochs")
        self.last_checkpoint = (path, self.start_epoch)
        self.log(f"=> resumed from {path} at epoch {self.start_epoch}")
        if changes:
            self.log(f"=> with changes (allowed): {describe(changes)}")
        self._call("after_resume")  # e.g. model_best.pth checked against metrics.jsonl, before anything trains

    def _own_rank_state(self, state: Dict[str, Any]) -> Dict[str, Any]:
        """The RNG states this process resumes with: its rank's under DDP (a checkpoint of as many processes), else
        those rank 0 (or the single process) saved."""
        ranks = state.get("ranks") or []
        if self.dist.enabled and len(ranks) == self.dist.world_size:
            return ranks[self.dist.rank]
        if self.dist.enabled:
            self.log(f"=> the checkpoint holds the RNG states of {len(ranks) or 1} process(es), this run has "
                     f"{self.dist.world_size}: each starts from rank 0's (the run goes on, not bit for bit as an "
                     "uninterrupted one)")
        return {"rng": state["rng"], "generators": state.get("generators", {})}

    def continue_command(self, extra: Sequence[str] = ()) -> str:
        """The command that continues this run from its newest checkpoint (``--resume auto`` when that is
        ``last.pth``), followed by ``extra`` arguments."""
        path = self.last_checkpoint[0] if self.last_checkpoint else os.path.join(self.out, "last.pth")
        resume = "auto" if path == os.path.join(self.out, "last.pth") else shlex.quote(path)
        return " ".join([self.command, "--resume", resume, *extra])

    def _interrupted(self) -> KeyboardInterrupt:
        """A KeyboardInterrupt whose ``hint`` (printed by the CLI) says where the run stopped and how to go on."""
        e = KeyboardInterrupt()
        where = f"interrupted at epoch {self.state.epoch + 1}, iteration {self.state.iter}"
        # under DDP, a rank > 0 stopped while rank 0 writes the epoch's checkpoint learns of it from the file
        written = self.last_checkpoint is not None or os.path.exists(os.path.join(self.out, "last.pth"))
        e.hint = (f"{where}; continue with: {self.continue_command()}" if written
                  else f"{where}, before the first checkpoint; start again with: {self.command}")
        return e

    # ------------------------------------------------------------------------------------------------------------
    def train_step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """One optimisation step on a loader batch (hooks' ``before_step`` / ``after_step`` around it); returns the
        loss terms as floats."""
        masks = batch.get("cue_masks")
        images, masks = self.augment.with_aligned(batch["images"].to(self.device, non_blocking=True),
                                                  None if masks is None else masks.to(self.device, non_blocking=True))
        if self.cfg.solver.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pids = batch["pids"].to(self.device, non_blocking=True)
        self.state.batch = {"images": images, "pids": pids, **({"cue_masks": masks} if masks is not None else {})}
        self.state.extra = {}
        self._call("before_step")
        inputs = {k: self.state.batch[k] for k in self.model.train_inputs}  # declared by the model
        with autocast(self.device, self.cfg.solver.amp):
            terms = self.net(images, pids, **inputs)
        loss = sum(t.float() for t in terms.values())
        optimizers = [self.optimizer] + ([self.sgd] if self.sgd is not None else [])
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.solver.grad_clip > 0:
            for opt in optimizers:
                self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.solver.grad_clip)
        for opt in optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        self.scheduler.step()
        self.state.iter += 1
        self.state.terms = {**{k: float(v.detach()) for k, v in terms.items()}, "loss": float(loss.detach())}
        self._call("after_step")
        return {**self.state.terms, **self.state.extra}

    def _train_epoch(self, epoch: int) -> None:
        self.state.epoch = epoch
        self.model.train()
        self.train_loader.batch_sampler.set_epoch(epoch)
        self._call("before_epoch")
        bar = progress(self.train_loader, f"epoch {epoch + 1}/{self.cfg.solver.epochs}", enabled=self.progress)
        for batch in bar:
            terms = self.train_step(batch)
            bar.set_postfix(loss=f"{terms['loss']:.3f}")
        if self.dist.enabled:  # every rank's RNGs, for rank 0's checkpoint (each rank resumes with its own)
            self.rank_states = all_gather(self.dist, self.rank_state())
        self._call("after_epoch")
        barrier(self.dist)  # the other processes wait for rank 0's evaluation and checkpoint
        if not self.dist.is_main:  # rank 0 has written it: the Ctrl-C hint of every rank names it
            self.last_checkpoint = (os.path.join(self.out, "last.pth"), epoch + 1)

    def evaluate(self) -> Tuple[Dict[str, Any], List[CaseResult]]:
        """The metrics of the current model on every test case (:mod:`esreid.engine.testsets`: the primary case's at
        the top level, each case's under ``cases``) and the cases' results (with the features each ranked)."""
        return evaluate_run(self.model, self.test_cases, self.cfg, self.device)

    def train(self) -> Dict[str, Any]:
        """Run the remaining epochs; returns the last evaluation's metrics (a finished run's, when resumed).

        Ctrl-C raises a ``KeyboardInterrupt`` whose ``hint`` names the epoch, the iteration and the command that
        continues the run."""
        cfg = self.cfg
        self.state.iter = self.start_epoch * self.iters_per_epoch
        self.state.epoch = self.start_epoch
        if self.start_epoch >= cfg.solver.epochs:
            self.log(f"=> the run in {self.out} is finished: its checkpoint is at epoch {self.start_epoch} and "
                     f"solver.epochs is {cfg.solver.epochs} (raise it to train longer)")
        try:
            self._call("before_train")
            for epoch in range(self.start_epoch, cfg.solver.epochs):
                self._train_epoch(epoch)
            self._call("after_train")
        except KeyboardInterrupt as e:
            raise self._interrupted() from e
        metrics = self.state.metrics
        if metrics and self.dist.is_main:
            atomic_write(os.path.join(self.out, "results.json"), json.dumps(metrics, indent=2))
        return metrics

