"""What ``test.occlusion`` may say, and which pixels each condition occludes (the grammar and the determinism, checked
when a config is loaded); the occluder shapes (:data:`esreid.data.occlusion.OCCLUDERS`) and the occluded images are
:mod:`esreid.data.occlusion`, which sits above the config layer.

A *condition* is a string ``kind`` or ``kind:fraction`` whose kind is registered in ``OCCLUDERS``: ``none`` (the
query as it is), ``random:F`` and ``lower:F`` (0 < F < 1: the fraction of the image area hidden;
:mod:`esreid.data.occlusion` says how).

Determinism: the rectangle of query ``index`` (its position in the query list) with file name ``name`` under
``condition`` comes from a generator seeded with SHA-256 of ``"<condition>|<index>|<name>"``. It depends on nothing
else (not the model, the run, the seed, the process or the data root), so every model evaluated on a dataset sees
the same occluded pixels at the same input size.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from esreid.registry import RegistryRef

OCCLUDERS = RegistryRef("esreid.data.occlusion:OCCLUDERS")  # kind -> box function, imported on first use
Box = Tuple[int, int, int, int]  # (top, left, height, width) in pixels


@dataclass(frozen=True)
class Condition:
    """A parsed condition: ``kind`` (a name in ``OCCLUDERS``) and ``fraction`` (None for ``none``)."""

    kind: str
    fraction: Optional[float] = None

    @property
    def name(self) -> str:
        return self.kind if self.fraction is None else f"{self.kind}:{self.fraction:g}"

    @property
    def occludes(self) -> bool:
        return self.kind != "none"

    def box(self, height: int, width: int, index: int, name: str) -> Optional[Box]:
        """The occluded rectangle of query ``index`` (file name ``name``) at ``height x width``; None for ``none``."""
        if not self.occludes:
            return None
        return OCCLUDERS.get(self.kind)(height, width, self.fraction, generator(self.name, index, name))


def parse_condition(text: str) -> Condition:
    """``"none"``, ``"random:0.2"``, ``"lower:0.3"`` -> :class:`Condition`; ValueError with the reason otherwise."""
    kind, sep, value = str(text).partition(":")
    if kind not in OCCLUDERS.names():
        raise ValueError(f"unknown occlusion {text!r}: expected none, or kind:fraction with kind one of "
                         f"{', '.join(n for n in OCCLUDERS.names() if n != 'none')} (e.g. random:0.2)")
    if kind == "none":
        if sep:
            raise ValueError(f"occlusion {text!r}: 'none' takes no fraction")
        return Condition("none")
    try:
        fraction = float(value)
    except ValueError:
        fraction = math.nan
    if not 0 < fraction < 1:
        raise ValueError(f"occlusion {text!r}: expected {kind}:F with a fraction 0 < F < 1 of the image area")
    return Condition(kind, fraction)


def condition_problem(text: str) -> Optional[str]:
    """What is wrong with a condition string (None when nothing): for config checks."""
    try:
        parse_condition(text)
    except ValueError as e:
        return str(e)
    return None


def generator(condition: str, index: int, name: str) -> np.random.Generator:
    """The generator of one query under one condition (module docstring: SHA-256 of the three)."""
    digest = hashlib.sha256(f"{condition}|{index}|{os.path.basename(name)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
