"""Name -> object registries, so that methods, datasets and protocols are chosen by config, not if-chains.

A registry knows where its entries are defined (``locations``: modules, or packages whose every module is imported)
and imports them on its first lookup or listing, as mmengine's registries do: nobody keeps an import list to fill a
registry, and importing the module that defines one stays cheap. Code that must not import the registry's module at
import time (the config schema sits below models, data and engine) names it by :class:`RegistryRef`
(``"module:ATTR"``), which imports it on first use.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple


class Registry:
    """A named mapping filled with the ``register`` decorator by the modules of ``locations``, imported on the first
    lookup (``get``, ``meta``, ``names``, ``items``, ``in``).

    >>> MODELS = Registry("model")
    >>> @MODELS.register("baseline", config=dict)
    ... class Baseline: ...
    >>> MODELS.get("baseline") is Baseline
    True
    """

    def __init__(self, kind: str, locations: Sequence[str] = ()):
        self.kind = kind
        self.locations = tuple(locations)
        self._loaded = not self.locations
        self._objs: Dict[str, Any] = {}
        self._meta: Dict[str, Dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            if name in self._objs and self._objs[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._objs[name] = obj
            self._meta[name] = meta
            return obj

        return deco

    def load(self) -> None:
        """Import every module of ``locations`` (once): a package's modules and subpackages, recursively."""
        if self._loaded:
            return
        self._loaded = True  # before importing: a module that looks the registry up while it loads sees no recursion
        for location in self.locations:
            module = importlib.import_module(location)
            for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=location + "."):
                importlib.import_module(info.name)

    def get(self, name: str) -> Any:
        self.load()
        if name not in self._objs:
            raise KeyError(f"unknown {self.kind} {name!r}; expected one of: {', '.join(sorted(self._objs))}")
        return self._objs[name]

    def meta(self, name: str) -> Dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self) -> List[str]:
        self.load()
        return sorted(self._objs)

    def __contains__(self, name: str) -> bool:
        self.load()
        return name in self._objs

    def items(self) -> Iterator[Tuple[str, Any]]:
        self.load()
        return iter(sorted(self._objs.items()))


class RegistryRef:
    """A registry named by where it is defined (``"package.module:ATTR"``), imported on first use; it has the
    lookups of :class:`Registry`. For code below the registry's module (the config schema)."""

    def __init__(self, path: str):
        self.path = path

    def resolve(self) -> Registry:
        module, attr = self.path.split(":")
        return getattr(importlib.import_module(module), attr)

    def get(self, name: str) -> Any:
        return self.resolve().get(name)

    def meta(self, name: str) -> Dict[str, Any]:
        return self.resolve().meta(name)

    def names(self) -> List[str]:
        return self.resolve().names()
