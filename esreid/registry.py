"""Name -> object registries, so that methods, datasets and protocols are chosen by config, not if-chains."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Tuple


class Registry:
    """A named mapping filled with the ``register`` decorator.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("baseline", config=dict)
    ... class Baseline: ...
    >>> MODELS.get("baseline") is Baseline
    True
    """

    def __init__(self, kind: str):
        self.kind = kind
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

    def get(self, name: str) -> Any:
        if name not in self._objs:
            raise KeyError(f"unknown {self.kind} {name!r}; expected one of: {', '.join(sorted(self._objs))}")
        return self._objs[name]

    def meta(self, name: str) -> Dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self) -> list:
        return sorted(self._objs)

    def __contains__(self, name: str) -> bool:
        return name in self._objs

    def items(self) -> Iterator[Tuple[str, Any]]:
        return iter(sorted(self._objs.items()))
