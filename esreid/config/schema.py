"""esreid's config schema: the sections of :class:`Config` with their keys, constraints and structural checks, and
:func:`load_config`. The machinery (``param``, YAML, overrides, type checks) is :mod:`esreid.config.typed`.

A config is a tree of dataclasses (:class:`Config`). The ``model`` section is method-specific: each model registers
its own dataclass (a subclass of :class:`ModelConfig`) next to its class, and the section is validated against the
dataclass of ``model.name``.

Every mistake is found when the config is loaded, before any data is read, and raises :class:`ConfigError` naming the
dotted key and the file (or "command line") it came from:

* unknown keys and wrong types (:mod:`esreid.config.typed`); floats must be finite, of magnitude <= 1e30 (float32
  arithmetic);
* each field's own constraint, declared next to it with :func:`param` (ranges, choices, registry names, lengths);
* structural checks between fields that need no data: each section's ``check(cfg)`` method raises
  :class:`Invalid` naming the key to fix (milestones within epochs, Cutout square inside the image, a block size that
  divides the feature map, ...).

Checks that need the dataset (enough identities for a batch, a readable test split) run right after the dataset scan
(:func:`esreid.engine.preflight.check_dataset`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from esreid.config.pretrained import config_problem
from esreid.config.typed import (
    Invalid,
    Origins,
    Section,
    _build,
    _where,
    apply_overrides,
    load_raw,
    param,
)
from esreid.errors import ConfigError
from esreid.registry import RegistryRef

# The registries the schema checks names against, imported (and filled) when a config is checked, never when this
# module is imported: the config layer sits below models, data and engine.
MODELS = RegistryRef("esreid.models:MODELS")
BACKBONES = RegistryRef("esreid.models.backbones:BACKBONES")
POOLING = RegistryRef("esreid.models.pooling:POOLING")
DATASETS = RegistryRef("esreid.data.base:DATASETS")
PROTOCOLS = RegistryRef("esreid.evaluation.protocols:PROTOCOLS")
BACKBONE_NAMES = BACKBONES.names
POOLING_NAMES = POOLING.names
ERASE_VALUE_NAMES = RegistryRef("esreid.erasing.besm:ERASE_VALUES").names  # BESM's "set to 0" (docs/methods.md §7 #6)


@dataclass
class LossConfig(Section):
    """Loss weights shared by every method (ES-Net eq. 1 uses unit weights)."""

    ce_weight: float = param(1.0, ge=0)
    label_smoothing: float = param(0.0, ge=0, lt=1)  # ES-Net does not use it (docs/methods.md §7 #8); BDB/PMM use 0.1
    triplet_weight: float = param(1.0, ge=0)  # 0 disables the triplet term ("Base" of ES-Net Table II is CE only)
    triplet_margin: float = param(0.3, ge=0)
    soft_margin: bool = False  # log(1+exp(d_ap-d_an)) instead of the hinge (BDB/PMM)
    # batch_hard (docs/methods.md §0) | weighted (AGW's weighted regularisation, §8.3: no margin, soft margin always)
    triplet: str = param("batch_hard", choices=RegistryRef("esreid.losses.triplet:TRIPLETS").names)

    def check(self, cfg: Config) -> None:
        if self.ce_weight == 0 and self.triplet_weight == 0:
            raise Invalid("model.loss.ce_weight", "both loss weights (ce_weight, triplet_weight) are 0: nothing would "
                                                  "be trained; set one of them > 0")


@dataclass
class ModelConfig(Section):
    """Fields every model has. Methods subclass this and register it with their model class; a subclass adds its
    own ``check(cfg)`` for structural constraints (call ``super().check(cfg)``)."""

    name: str = "baseline"
    backbone: str = param("resnet50", choices=BACKBONE_NAMES)
    # ImageNet weights (torchvision keys): torchvision:<backbone>, a URL (both via the torch hub cache), a local file;
    # "" = random init (esreid.config.pretrained; loaded by esreid.models.backbones.weights)
    pretrained: str = ""
    last_stride: int = param(1, ge=1, le=2)
    loss: LossConfig = field(default_factory=LossConfig)

    def check(self, cfg: Config) -> None:
        problem = config_problem(self.pretrained)
        if problem:
            raise Invalid("model.pretrained", problem)
        if self.loss.triplet_weight > 0 and cfg.data.instances < 2:
            raise Invalid("data.instances", "the triplet loss needs at least 2 images per identity in a batch "
                                            "(or set model.loss.triplet_weight=0)")


def dataset_class(name: str) -> Any:
    """The registered dataset class ``name``."""
    return DATASETS.get(name)


@dataclass
class DataConfig(Section):
    name: str = param("synthetic", choices=DATASETS.names)
    root: str = param("data", nonempty=True)
    args: Dict[str, Any] = field(default_factory=dict)  # dataset-specific keyword arguments
    height: int = param(256, ge=1, le=4096)
    width: int = param(128, ge=1, le=4096)
    ids_per_batch: int = param(16, ge=2, le=4096)  # J (the triplet loss and PMM's partners need >= 2 identities)
    instances: int = param(4, ge=1, le=256)  # K
    workers: int = param(2, ge=0, le=256)
    cache: bool = False  # decode + resize once into a memory-mapped uint8 array
    cache_dir: str = ""  # default: <root>/.esreid_cache
    # per-channel statistics of pixel values in [0, 1]; (x - mean) / std stays within +-1000
    mean: List[float] = param(factory=lambda: [0.485, 0.456, 0.406], length=3, ge=0, le=1)
    std: List[float] = param(factory=lambda: [0.229, 0.224, 0.225], length=3, ge=1e-3, le=1)
    flip_prob: float = param(0.5, ge=0, le=1)
    pad: int = param(0, ge=0, le=1024)  # pad-and-random-crop (BoT); ES-Net uses flip + normalise only
    random_erasing: float = param(0.0, ge=0, le=1)  # probability of Zhong et al. random erasing
    cutout_prob: float = param(0.0, ge=0, le=1)  # probability of one Cutout square per image (BDB: 0.5)
    cutout_size: int = param(64, ge=1)  # side of the Cutout square in pixels (BDB: 64)
    test_batch_size: int = param(128, ge=1, le=65536)

    def check(self, cfg: Config) -> None:
        if self.cutout_prob > 0 and self.cutout_size > min(self.height, self.width):
            raise Invalid("data.cutout_size", f"the {self.cutout_size}x{self.cutout_size} Cutout square does not fit "
                                              f"in {self.height}x{self.width} images; lower it or set cutout_prob=0")
        problem = dataset_class(self.name).check_options(self.args)
        if problem:
            raise Invalid("data.args", f"dataset {self.name!r}: {problem}")


@dataclass
class SolverConfig(Section):
    optimizer: str = param("adam", choices=RegistryRef("esreid.engine.schedule:OPTIMIZERS").names)
    lr: float = param(3.5e-4, gt=0)
    weight_decay: float = param(5e-4, ge=0)
    momentum: float = param(0.9, ge=0, lt=1)  # SGD only
    epochs: int = param(120, ge=1, le=100000)
    warmup_epochs: int = param(10, ge=0)  # linear warm-up per iteration from warmup_factor*lr to lr (ES-Net: from 0)
    warmup_factor: float = param(0.0, ge=0, le=1)
    milestones: List[int] = param(factory=lambda: [40, 70], ge=1)
    gamma: float = param(0.1, gt=0, le=1)
    amp: str = param("none", choices=("none", "bf16", "fp16"))
    channels_last: bool = False
    compile: bool = False  # compile the model's static regions (trunk stages, heads), training and inference
    sync_bn: bool = False  # DDP on GPUs: synchronise BatchNorm statistics across processes
    grad_clip: float = param(0.0, ge=0)  # max gradient norm; 0 = no clipping

    def check(self, cfg: Config) -> None:
        m = self.milestones
        if any(b <= a for a, b in zip(m, m[1:])):
            raise Invalid("solver.milestones", f"expected strictly increasing epochs, got {m}")
        if m and m[-1] > self.epochs:  # = epochs is allowed: a run that will be extended (--resume) decays there
            raise Invalid("solver.milestones", f"milestone {m[-1]} lies after the last of the {self.epochs} epochs "
                                               "(0-based epoch from which the lr is multiplied by gamma); lower it")
        if self.warmup_epochs > self.epochs:
            raise Invalid("solver.warmup_epochs", f"{self.warmup_epochs} warm-up epochs exceed solver.epochs "
                                                  f"({self.epochs})")


@dataclass
class TestConfig(Section):
    # The retrieval rule: None keeps the method's own (ES-Net / BoT: flip, per-branch L2, cosine; BDB / PMM: no flip,
    # no L2, Euclidean), a value overrides it (docs/methods.md §1.7, §2.1).
    flip: Optional[bool] = None  # sum the features of the image and its mirror
    normalize: Optional[bool] = None  # L2-normalise each branch's feature before concatenation
    metric: Optional[str] = param(None, choices=RegistryRef("esreid.evaluation.distance:METRICS").names)
    eval_period: int = param(10, ge=0)  # epochs; 0 = only at the end
    ranks: List[int] = param(factory=lambda: [1, 5, 10, 20], ge=1, le=100_000, nonempty=True)  # the CMC is that long
    ap_mode: str = param("anchor", choices=RegistryRef("esreid.evaluation.metrics:AP_MODES").names)
    rerank: bool = False
    protocol_args: Dict[str, Any] = field(default_factory=dict)

    def check(self, cfg: Config) -> None:
        problem = dataset_class(cfg.data.name).check_protocol_options(cfg.data.args, self.protocol_args)
        if problem:
            raise Invalid("test.protocol_args", problem)


@dataclass
class DiagnosticsConfig(Section):
    """ES-Net Fig. 3 ("verification of motivation") for any model: log the model's loss on BESM-erased copies of each
    batch while it trains on the original images. Costs one extra saliency pass and forward per iteration."""

    erased_loss: bool = False
    layer: str = ""  # CG-RAM layer of the probed model; "" = the model's saliency_layer
    erase_ratio: float = param(0.2, ge=0, le=1)  # R
    erase_prob: float = param(1.0, ge=0, le=1)  # P (1: every copy is erased)
    erase_value: str = param("black", choices=ERASE_VALUE_NAMES)  # as ES-Net's BESM (docs/methods.md §7 #6)


@dataclass
class CheckpointConfig(Section):
    """What a run keeps besides ``last.pth`` (written after every epoch, with the optimiser: what resuming reads)."""

    period: int = param(10, ge=0)  # epochs between kept epoch_XXX.pth files; 0 = none
    keep_last: int = param(0, ge=0)  # keep only the newest N epoch_XXX.pth files; 0 = all
    # write model_best.pth when an evaluation improves this metric, one its protocol declares (mAP, mINP, R<k> for k
    # in test.ranks, mRR for the ranking protocols: esreid.evaluation.metric_keys); "" = never
    best: str = "mAP"
    full: bool = False  # epoch_XXX.pth and model_best.pth also hold the optimiser state (resumable; ~3x larger)

    def check(self, cfg: Config) -> None:
        protocol = dataset_class(cfg.data.name).protocol_name(cfg.data.args)
        metrics = [m.key for m in PROTOCOLS.meta(protocol)["metrics"].expand(cfg.test.ranks)]
        if self.best and self.best not in metrics:
            raise Invalid("checkpoint.best", f"expected one of {', '.join(metrics)} (a metric protocol {protocol!r} "
                                             f"reports; R<k> for k in test.ranks) or '' for none; got {self.best!r}")


@dataclass
class GuardConfig(Section):
    """The divergence guard (:class:`esreid.engine.guard.DivergenceGuard`): a step is *high* when its loss exceeds
    ``divergence_factor`` times the untrained model's loss (the run's first step); ``patience`` high steps in a row, or
    an epoch ending on a high step, stop the run before its checkpoint. A non-finite loss always stops it."""

    divergence_factor: float = param(10.0, ge=0)  # 0 = only non-finite losses stop the run
    patience: int = param(3, ge=1, le=1_000_000)  # consecutive high steps

    def check(self, cfg: Config) -> None:
        if 0 < self.divergence_factor <= 1:
            raise Invalid("guard.divergence_factor", f"expected 0 (off) or a factor > 1 of the untrained model's "
                                                     f"loss, got {self.divergence_factor!r} (default 10)")


@dataclass
class Config(Section):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    output_dir: str = param("outputs/run", nonempty=True)
    seed: int = param(0, ge=0, lt=2**32)  # numpy accepts seeds below 2^32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_period: int = param(20, ge=0)  # iterations between console/JSONL log lines
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # intra-op CPU threads: auto (OMP_NUM_THREADS when set, else the cores left free, esreid/engine/threads.py) or N
    threads: Union[int, str] = param("auto", choices=("auto",), ge=1)
    tensorboard: bool = False
    report: bool = True  # <output_dir>/report.html (metrics, plots, CG-RAM explanations) at each evaluation and the end

    def check(self, cfg: Config) -> None:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise Invalid("device", f"expected auto, cpu, cuda or cuda:N, got {self.device!r}")


def model_config_class(name: str) -> type:
    return MODELS.meta(name).get("config", ModelConfig)


def build_config(raw: Dict[str, Any], origins: Optional[Origins] = None) -> Config:
    """Validate a merged dict against the schema (types, each field's constraint, each section's structural
    checks) and return a :class:`Config`; every problem raises :class:`ConfigError` naming the key and its file."""
    origins = origins or {}
    raw = dict(raw)
    model_raw = raw.pop("model", {})
    if not isinstance(model_raw, dict):
        raise ConfigError(f"{_where('model', origins)}: key 'model' is a section: give it keys (e.g. model.name), "
                          f"got {model_raw!r}")
    name = model_raw.get("name", ModelConfig.name)
    if not isinstance(name, str):
        raise ConfigError(f"{_where('model.name', origins)}: key 'model.name': expected a string, got {name!r}")
    try:
        model_cls = model_config_class(name)
    except KeyError as e:
        raise ConfigError(f"{_where('model.name', origins)}: key 'model.name': {e.args[0]}") from None
    cfg = _build(Config, raw, "", origins)
    cfg.model = _build(model_cls, model_raw, "model.", origins)
    vars(cfg)["_origins"] = dict(origins)  # not a field: kept for errors found after loading (invalid())
    for section in (cfg.model.loss, cfg.model, cfg.data, cfg.solver, cfg.test, cfg.diagnostics, cfg.guard,
                    cfg.checkpoint, cfg):
        try:
            section.check(cfg)
        except Invalid as e:
            raise invalid(cfg, e.key, e.message) from None
    return cfg


def invalid(cfg: Config, key: str, message: str) -> ConfigError:
    """A :class:`ConfigError` for ``key`` of a loaded config, naming the file (or command line) that set it; for
    problems found after loading, e.g. once the dataset is known."""
    return ConfigError(f"{_where(key, vars(cfg).get('_origins', {}))}: key '{key}': {message}")


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> Config:
    """Load ``path`` (with its ``_base_`` chain) and apply ``key=value`` overrides."""
    origins: Origins = {}
    raw = load_raw(path, origins) if path else {}
    apply_overrides(raw, list(overrides or []), origins, Config)
    return build_config(raw, origins)
