"""Configs: :mod:`esreid.config.typed` is the typed-config machinery (sections, ``param`` constraints, YAML with
``_base_``, overrides), :mod:`esreid.config.schema` is esreid's schema and :func:`load_config`. The names users and
the other layers import are re-exported here."""

from esreid.config.schema import (
    BACKBONE_NAMES,
    ERASE_VALUE_NAMES,
    POOLING_NAMES,
    CheckpointConfig,
    Config,
    DataConfig,
    DiagnosticsConfig,
    GuardConfig,
    LossConfig,
    ModelConfig,
    SolverConfig,
    TestConfig,
    build_config,
    dataset_class,
    invalid,
    load_config,
    model_config_class,
)
from esreid.config.typed import (
    FLOAT_LIMIT,
    Check,
    Invalid,
    Section,
    apply_overrides,
    dump_yaml,
    load_raw,
    param,
    parse_override,
    to_dict,
)
from esreid.errors import ConfigError

__all__ = [
    "BACKBONE_NAMES", "ERASE_VALUE_NAMES", "POOLING_NAMES", "CheckpointConfig", "Config", "DataConfig",
    "DiagnosticsConfig", "GuardConfig", "LossConfig", "ModelConfig", "SolverConfig", "TestConfig", "build_config",
    "dataset_class", "invalid", "load_config", "model_config_class", "FLOAT_LIMIT", "Check", "Invalid", "Section",
    "apply_overrides", "dump_yaml", "load_raw", "param", "parse_override", "to_dict", "ConfigError",
]
