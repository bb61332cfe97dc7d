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
    DatasetEntry,
    DiagnosticsConfig,
    GuardConfig,
    LossConfig,
    ModelConfig,
    SolverConfig,
    TestConfig,
    build_config,
    case_name,
    case_names,
    dataset_class,
    dataset_entries,
    invalid,
    load_config,
    model_config_class,
    training_sets_without_cue_masks,
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
    read_yaml_file,
    safe_yaml,
    to_dict,
)
from esreid.errors import ConfigError

__all__ = [
    "BACKBONE_NAMES", "ERASE_VALUE_NAMES", "POOLING_NAMES", "CheckpointConfig", "Config", "DataConfig",
    "DatasetEntry", "DiagnosticsConfig", "GuardConfig", "LossConfig", "ModelConfig", "SolverConfig", "TestConfig",
    "build_config", "case_name", "case_names", "dataset_class", "dataset_entries", "invalid", "load_config",
    "model_config_class", "training_sets_without_cue_masks", "FLOAT_LIMIT", "Check", "Invalid", "Section",
    "apply_overrides", "dump_yaml", "load_raw", "param", "parse_override", "read_yaml_file", "safe_yaml", "to_dict",
    "ConfigError",
]
