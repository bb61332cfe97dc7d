"""Typed configuration: YAML files with ``_base_`` inheritance and dotted command-line overrides.

A config is a tree of dataclasses (:class:`Config`). The ``model`` section is method-specific: each model
registers its own dataclass (a subclass of :class:`ModelConfig`) next to its class, and the section is
validated against the dataclass of ``model.name``. Unknown keys and wrong types raise :class:`ConfigError`
naming the dotted key and the file (or "command line") it came from.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from esreid.errors import EsreidError


class ConfigError(EsreidError, ValueError):
    """A config file or override is wrong; the message names the key and where it came from."""


# --------------------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------------------
@dataclass
class LossConfig:
    """Loss weights shared by every method (ES-Net eq. 1 uses unit weights)."""

    ce_weight: float = 1.0
    label_smoothing: float = 0.0  # ES-Net does not use it (spec §7 #8); BDB/PMM use 0.1
    triplet_weight: float = 1.0  # 0 disables the triplet term ("Base" of ES-Net Table II is CE only)
    triplet_margin: float = 0.3
    soft_margin: bool = False  # log(1+exp(d_ap-d_an)) instead of the hinge (BDB/PMM)


@dataclass
class ModelConfig:
    """Fields every model has. Methods subclass this and register it with their model class."""

    name: str = "baseline"
    backbone: str = "resnet50"
    pretrained: str = ""  # path or URL of an ImageNet state dict (torchvision keys); "" = random init
    last_stride: int = 1
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class DataConfig:
    name: str = "synthetic"
    root: str = "data"
    args: Dict[str, Any] = field(default_factory=dict)  # dataset-specific keyword arguments
    height: int = 256
    width: int = 128
    ids_per_batch: int = 16  # J
    instances: int = 4  # K
    workers: int = 2
    cache: bool = False  # decode + resize once into a memory-mapped uint8 array
    cache_dir: str = ""  # default: <root>/.esreid_cache
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    flip_prob: float = 0.5
    pad: int = 0  # pad-and-random-crop (BoT); ES-Net uses flip + normalise only
    random_erasing: float = 0.0  # probability of Zhong et al. random erasing
    cutout_prob: float = 0.0  # probability of one Cutout square per image (DeVries & Taylor; BDB: 0.5)
    cutout_size: int = 64  # side of the Cutout square in pixels (BDB: 64)
    test_batch_size: int = 128


@dataclass
class SolverConfig:
    optimizer: str = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9  # SGD only
    epochs: int = 120
    warmup_epochs: int = 10  # linear warm-up per iteration from warmup_factor*lr to lr (ES-Net: from 0)
    warmup_factor: float = 0.0
    milestones: List[int] = field(default_factory=lambda: [40, 70])
    gamma: float = 0.1
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    sync_bn: bool = False  # DDP on GPUs: synchronise BatchNorm statistics across processes
    grad_clip: float = 0.0


@dataclass
class TestConfig:
    flip: bool = True  # average original and horizontally flipped features
    normalize: bool = True  # L2-normalise each branch's feature before concatenation
    metric: str = "cosine"  # cosine | euclidean
    eval_period: int = 10  # epochs; 0 = only at the end
    ranks: List[int] = field(default_factory=lambda: [1, 5, 10, 20])
    ap_mode: str = "anchor"  # anchor (mean precision at hits) | official (Market trapezoid)
    rerank: bool = False
    protocol_args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DiagnosticsConfig:
    """ES-Net Fig. 3 ("verification of motivation"): log the model's loss on BESM-erased copies of each batch
    while it trains on the original images. Costs one extra saliency pass and forward per iteration."""

    erased_loss: bool = False
    layer: str = "backbone.layer4"  # CG-RAM layer of the probed model (res_conv5 of the baseline)
    erase_ratio: float = 0.2  # R
    erase_prob: float = 1.0  # P (1: every copy is erased)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    output_dir: str = "outputs/run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_period: int = 20  # iterations between console/JSONL log lines
    checkpoint_period: int = 10  # epochs between kept checkpoints (the latest is always saved)
    tensorboard: bool = False


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
Origins = Dict[str, str]  # dotted key -> file (or "command line") that set it


def _read_yaml(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(dst: Dict[str, Any], src: Dict[str, Any], origins: Origins, source: str, prefix: str = "") -> None:
    for key, value in src.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: key {key!r} under '{prefix or '<top>'}' must be a string")
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict) and not dotted.endswith("args"):
            _merge(dst[key], value, origins, source, dotted + ".")
        else:
            dst[key] = value
            origins[dotted] = source
            if isinstance(value, dict):
                for sub in _flatten_keys(value, dotted + "."):
                    origins[sub] = source


def _flatten_keys(d: Dict[str, Any], prefix: str) -> List[str]:
    out = []
    for k, v in d.items():
        out.append(f"{prefix}{k}")
        if isinstance(v, dict):
            out.extend(_flatten_keys(v, f"{prefix}{k}."))
    return out


def load_raw(path: str, origins: Optional[Origins] = None, _stack: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """Read ``path`` and its ``_base_`` chain (paths relative to the file) into one merged dict."""
    path = os.path.normpath(path)
    if path in _stack:
        raise ConfigError(f"{path}: _base_ cycle: {' -> '.join(_stack + (path,))}")
    origins = {} if origins is None else origins
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: key '_base_': expected a path or a list of paths")
    merged: Dict[str, Any] = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        _merge(merged, load_raw(base_path, origins, _stack + (path,)), origins, base_path)
    _merge(merged, data, origins, path)
    return merged


def parse_override(item: str) -> Tuple[str, Any]:
    """``"solver.lr=1e-3"`` -> ``("solver.lr", 0.001)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"command line: override {item!r} must look like key.sub=value")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"command line: override {item!r} has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(raw: Dict[str, Any], overrides: List[str], origins: Origins) -> None:
    for item in overrides:
        key, value = parse_override(item)
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part not in node:  # a section this override creates: errors about it name the command line
                origins[".".join(parts[: i + 1])] = "command line"
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: override {item!r}: '{part}' is not a section")
        node[parts[-1]] = value
        origins[key] = "command line"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, origins: Origins) -> Any:
    where = origins.get(key, _nearest_origin(key, origins))
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, origins)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}': expected a section (mapping), got {value!r}")
        return _build(tp, value, key + ".", origins)
    if origin in (list, List):
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key '{key}': expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]", {**origins, f"{key}[{i}]": where}) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-3" / "3.5e-4" as strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}': expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: key '{key}': unsupported type {tp}")  # pragma: no cover - schema bug


def _nearest_origin(key: str, origins: Origins) -> str:
    parts = key.split(".")
    while parts:
        parts.pop()
        if ".".join(parts) in origins:
            return origins[".".join(parts)]
    return "defaults"


def _build(cls: Any, data: Dict[str, Any], prefix: str, origins: Origins) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            dotted = prefix + str(key)
            where = origins.get(dotted, _nearest_origin(dotted, origins))
            raise ConfigError(
                f"{where}: unknown key '{dotted}'; expected one of: {', '.join(sorted(names))}"
            )
    kwargs = {k: _coerce(v, hints[k], prefix + k, origins) for k, v in data.items()}
    return cls(**kwargs)


def model_config_class(name: str) -> type:
    from esreid.models import MODELS  # late import: models register their config classes

    return MODELS.meta(name).get("config", ModelConfig)


def build_config(raw: Dict[str, Any], origins: Optional[Origins] = None) -> Config:
    """Validate a merged dict against the schema and return a :class:`Config`."""
    origins = origins or {}
    raw = dict(raw)
    model_raw = raw.pop("model", {}) or {}
    if not isinstance(model_raw, dict):
        raise ConfigError(f"{origins.get('model', 'defaults')}: key 'model': expected a section")
    name = model_raw.get("name", ModelConfig.name)
    if not isinstance(name, str):
        raise ConfigError(f"{origins.get('model.name', 'defaults')}: key 'model.name': expected a string, got {name!r}")
    try:
        model_cls = model_config_class(name)
    except KeyError as e:
        raise ConfigError(f"{origins.get('model.name', 'defaults')}: key 'model.name': {e.args[0]}") from None
    cfg = _build(Config, raw, "", origins)
    cfg.model = _build(model_cls, model_raw, "model.", origins)
    validate(cfg, origins)
    return cfg


_CHOICES = {
    "solver.optimizer": ("adam", "adamw", "sgd"),
    "solver.amp": ("none", "bf16", "fp16"),
    "test.metric": ("cosine", "euclidean"),
    "test.ap_mode": ("anchor", "official"),
}


def _get(cfg: Config, dotted: str) -> Any:
    return functools.reduce(getattr, dotted.split("."), cfg)


def validate(cfg: Config, origins: Origins) -> None:
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"{origins.get(key, 'defaults')}: key '{key}': expected one of {choices}, got {value!r}")
    positive = ("data.height", "data.width", "data.ids_per_batch", "data.instances", "solver.epochs")
    for key in positive:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{origins.get(key, 'defaults')}: key '{key}': expected a positive integer")
    for key in ("data.workers", "test.eval_period", "log_period", "checkpoint_period", "solver.warmup_epochs"):
        if _get(cfg, key) < 0:
            raise ConfigError(f"{origins.get(key, 'defaults')}: key '{key}': expected 0 or a positive integer")
    if cfg.data.instances < 2 and cfg.model.loss.triplet_weight > 0:
        raise ConfigError(
            f"{origins.get('data.instances', 'defaults')}: key 'data.instances': the triplet loss needs "
            "at least 2 images per identity in a batch"
        )


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> Config:
    """Load ``path`` (with its ``_base_`` chain) and apply ``key=value`` overrides."""
    origins: Origins = {}
    raw = load_raw(path, origins) if path else {}
    apply_overrides(raw, list(overrides or []), origins)
    return build_config(raw, origins)


def to_dict(cfg: Any) -> Dict[str, Any]:
    """A plain-dict copy of a config (YAML- and checkpoint-safe)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
