"""The typed-config machinery: dataclass sections whose fields declare their own constraints (:func:`param`), YAML
files with ``_base_`` inheritance, dotted command-line overrides, and the loader that checks a merged dict against a
root dataclass. Nothing here knows esreid's keys: the schema is :mod:`esreid.config.schema`.

Every mistake raises :class:`~esreid.errors.ConfigError` naming the dotted key and the file (or "command line") it
came from: unknown keys and wrong types (:func:`_coerce`; floats must be finite, of magnitude <= 1e30 for float32
arithmetic) and each field's own constraint. Structural checks between fields are the sections' ``check(cfg)``
methods, which raise :class:`Invalid`.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from esreid.errors import ConfigError


class Invalid(Exception):
    """Raised by a section's ``check(cfg)``: ``key`` (dotted, from the top) holds a value that does not fit."""

    def __init__(self, key: str, message: str):
        super().__init__(key, message)
        self.key, self.message = key, message


# --------------------------------------------------------------------------------------------------------------
# Field constraints
# --------------------------------------------------------------------------------------------------------------
Names = Union[Sequence[str], Callable[[], Sequence[str]]]


@dataclass(frozen=True)
class Check:
    """A field's own constraint (see :func:`param`)."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    choices: Optional[Names] = None
    length: Optional[int] = None  # lists: exact number of items
    nonempty: bool = False  # lists and strings

    def problem(self, value: Any) -> Optional[str]:
        """What is wrong with ``value`` (already of the field's type), or None. Lists are checked item by item."""
        if value is None:
            return None
        if isinstance(value, list):
            if self.nonempty and not value:
                return "expected a non-empty list"
            if self.length is not None and len(value) != self.length:
                return f"expected a list of {self.length} items, got {len(value)}"
            for i, item in enumerate(value):
                bad = self.problem(item)
                if bad:
                    return f"item {i} ({item!r}): {bad}"
            return None
        if isinstance(value, str):
            if self.nonempty and not value:
                return "expected a non-empty string"
            if self.choices is not None:
                names = list(self.choices() if callable(self.choices) else self.choices)
                if value not in names:
                    return f"expected one of {', '.join(names)}; got {value!r}"
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            bounds = [(self.ge, ">=", value >= (self.ge or 0)), (self.gt, ">", value > (self.gt or 0)),
                      (self.le, "<=", value <= (self.le or 0)), (self.lt, "<", value < (self.lt or 0))]
            failed = [f"{op} {bound:g}" for bound, op, ok in bounds if bound is not None and not ok]
            if failed:
                return f"expected a value {' and '.join(failed)}, got {value!r}"
        return None


def param(default: Any = dataclasses.MISSING, *, factory: Optional[Callable[[], Any]] = None, **check: Any) -> Any:
    """A dataclass field with a :class:`Check` (keywords ``ge, gt, le, lt, choices, length, nonempty``) that the loader
    applies: ``lr: float = param(3.5e-4, gt=0)``; ``milestones: List[int] = param(factory=..., ge=1)``."""
    meta = {"check": Check(**check)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class Section:
    """Base of the config sections: ``check(cfg)`` raises :class:`Invalid` for a structural problem that a single
    field's constraint cannot express (it sees the whole config)."""

    def check(self, cfg: Any) -> None:
        """No structural constraint by default."""


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
# Largest float magnitude accepted: far inside float32's range (3.4e38), so that the products training forms with a
# value (Adam's bias-corrected step: lr x 10, ...) stay finite; 1e30 is already absurd for any setting
FLOAT_LIMIT = 1e30
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
Origins = Dict[str, str]  # dotted key -> file (or "command line") that set it


# Bounds of a YAML document (configs, sweep specs, override values): a config is a few hundred nodes a few levels
# deep. Aliases are counted where they are used, so a "billion laughs" document (nine anchors of nine aliases of the
# one before) is refused while it is still a few hundred parsed nodes, instead of expanding into gigabytes when the
# merge walks it; the depth bound keeps the recursive composer far from Python's recursion limit.
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 50


class YAMLTooLarge(yaml.YAMLError):
    """A YAML document past :data:`MAX_YAML_NODES` (aliases expanded) or :data:`MAX_YAML_DEPTH`, or one that refers
    to itself."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents nested deeper than :data:`MAX_YAML_DEPTH`, and, before anything is
    constructed, documents whose node graph expands (every alias replaced by what it names) into more than
    :data:`MAX_YAML_NODES` nodes or refers to itself."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise YAMLTooLarge(f"nested deeper than {MAX_YAML_DEPTH} levels (at line {mark.line + 1}, column "
                                   f"{mark.column + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        _expanded_size(node)
        return node


def _expanded_size(root: Any) -> int:
    """Nodes of ``root`` with every alias expanded (memoised per node, so the count itself stays cheap); raises
    :class:`YAMLTooLarge` past :data:`MAX_YAML_NODES` or on a node that contains itself."""
    sizes: Dict[int, int] = {}
    active: set = set()

    def size(node: Any) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in active:
            raise YAMLTooLarge(f"an alias refers to a node that contains it (line {node.start_mark.line + 1})")
        active.add(id(node))
        children = node.value if isinstance(node, yaml.SequenceNode) else [
            n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        total = 1 + sum(size(child) for child in children)
        active.discard(id(node))
        if total > MAX_YAML_NODES:
            raise YAMLTooLarge(f"expands into more than {MAX_YAML_NODES:,} nodes once its aliases are replaced "
                               f"(line {node.start_mark.line + 1}); a config needs a few hundred: write the values "
                               "out, or use _base_ files to share them")
        sizes[id(node)] = total
        return total

    return size(root)


def safe_yaml(text: Any) -> Any:
    """``yaml.safe_load`` of ``text`` (a string or a text file) within the bounds above; raises ``yaml.YAMLError``
    (:class:`YAMLTooLarge` for the bounds)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml_file(path: str) -> Any:
    """The YAML document in ``path`` (:func:`safe_yaml`); every problem with its text is a :class:`ConfigError`
    naming the file: not UTF-8, not valid YAML, past the bounds."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the file ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}, e.g. a Latin-1 "
                          "accent): save the file as UTF-8") from None
    stream = io.StringIO(text)
    stream.name = path  # marks name the file (and quote no snippet), as when reading the file itself
    try:
        return safe_yaml(stream)
    except YAMLTooLarge as e:
        raise ConfigError(f"{path}: YAML document refused: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def _read_yaml(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    data = read_yaml_file(path)
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
        parsed = safe_yaml(value) if value.strip() else ""
    except YAMLTooLarge as e:
        raise ConfigError(f"command line: override {key!r}: YAML value refused: {e}") from None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(raw: Dict[str, Any], overrides: List[str], origins: Origins, root: Any) -> None:
    """Apply ``key=value`` overrides to the merged dict. A mapping value merges into the section it names
    (``solver={lr: 0.1}`` changes only ``solver.lr``); a section cannot be replaced by a plain value or null."""
    for item in overrides:
        key, value = parse_override(item)
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part not in node:  # a section this override creates: errors about it name the command line
                origins[".".join(parts[: i + 1])] = "command line"
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: override {item!r}: '{'.'.join(parts[: i + 1])}' is not a section")
        leaf = parts[-1]
        if isinstance(node.get(leaf), dict) and not key.endswith("args"):
            if not isinstance(value, dict):
                raise ConfigError(f"command line: override {item!r}: '{key}' is a section; set its keys "
                                  f"(e.g. {key}.<key>=<value>) or give a mapping ({key}={{<key>: <value>}})")
            _merge(node[leaf], value, origins, "command line", key + ".")
        elif _is_section(key, root) and not isinstance(value, dict):
            raise ConfigError(f"command line: override {item!r}: '{key}' is a section; set its keys "
                              f"(e.g. {key}.<key>=<value>)")
        else:
            node[leaf] = value
            origins[key] = "command line"
            if isinstance(value, dict):
                for sub in _flatten_keys(value, key + "."):
                    origins[sub] = "command line"


def _is_section(key: str, root: Any) -> bool:
    """Whether the dotted ``key`` names a section (a dataclass) of the schema ``root`` (``model``, ``model.loss``,
    ...)."""
    cls: Any = root
    for part in key.split("."):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return False
        cls = hints[part]
    return dataclasses.is_dataclass(cls)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, origins: Origins) -> Any:
    where = _where(key, origins)
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            if len(args) < len(typing.get_args(tp)):  # Optional[...]: null is a value
                return None
            raise ConfigError(f"{where}: key '{key}': expected {' or '.join(map(_type_name, args))}, got null")
        errors = []
        for arg in args:  # the first type the value fits; the first type's error when none does
            try:
                return _coerce(value, arg, key, origins)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if value is None:
            raise ConfigError(f"{where}: key '{key}' is a section but is empty (null); give it keys or leave it out")
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
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: key '{key}': expected a mapping with string keys, got {value!r}")
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
            value = float(value)  # YAML 1.1 reads "1e-3" / "3.5e-4" as strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key '{key}': expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: key '{key}': expected a finite number, got {value!r}")
        if abs(value) > FLOAT_LIMIT:  # training computes in float32: products with such a value overflow
            raise ConfigError(f"{where}: key '{key}': expected a number of magnitude <= {FLOAT_LIMIT:g} (training "
                              f"computes in float32), got {value!r}")
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


def _where(key: str, origins: Origins) -> str:
    """The file (or "command line", or "defaults") that set ``key`` (a list item ``key[i]...``: the list's)."""
    plain = re.sub(r"\[\d+\]", "", key)
    return origins.get(key, origins.get(plain, _nearest_origin(plain, origins)))


def _build(cls: Any, data: Dict[str, Any], prefix: str, origins: Origins) -> Any:
    """The dataclass ``cls`` from ``data``: unknown keys, types and each field's :class:`Check` are enforced."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            dotted = prefix + str(key)
            raise ConfigError(
                f"{_where(dotted, origins)}: unknown key '{dotted}'; expected one of: {', '.join(sorted(fields))}"
            )
    obj = cls(**{k: _coerce(v, hints[k], prefix + k, origins) for k, v in data.items()})
    for name, f in fields.items():
        check = f.metadata.get("check")
        problem = check.problem(getattr(obj, name)) if check is not None else None
        if problem:
            key = prefix + name
            raise ConfigError(f"{_where(key, origins)}: key '{key}': {problem}")
    return obj


def to_dict(cfg: Any) -> Dict[str, Any]:
    """A plain-dict copy of a config (YAML- and checkpoint-safe)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
