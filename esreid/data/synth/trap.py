"""The saliency trap of the synthetic dataset (``data.args: trap: {...}``, off by default).

ES-Net's premise (Shen et al., TIP 2021; docs/methods.md §1) is that a normally trained re-ID model relies on a
few salient regions and fails where identities differ elsewhere; erasing the most salient part (BESM, §1.4) forces
it to learn the rest. The trap builds that situation on purpose: one large,
high-contrast cue is (nearly) sufficient to tell the TRAINING identities apart, while the TEST identities share it
within groups of ``group_size``, so that among test ids it only tells groups apart and within a group the identities
differ only in the ordinary cues. A model that leans on the trap cue ranks same-group impostors high; the marker
records each test pid's group (:func:`trap_groups`) so a benchmark can count how often a rank-1 error is one.

The cue value is an ordered pair of distinct palette colours (``CLOTH``, 12 colours: 132 values), painted as the
top and bottom halves of a rectangle. ``cue`` chooses where (:data:`TRAP_CUES`): ``"emblem"``, a print on the lower
half of the torso, the same on the front and the back; ``"bag"``, a bag carried in the hand opposite to the
shoulder bag. ``size`` scales the rectangle, ``contrast`` blends its colours over what is underneath (1: opaque,
0: invisible, a control with exactly the images of the trap-free dataset).

Default ``{cue: emblem, size: 1.0, contrast: 1.0, group_size: 4}``, chosen before any model was trained on it:

- **nearly sufficient in training**: every train id gets its own cue value (132 values, so up to 132 train ids are
  all distinct; beyond that each value is reused by at most ``ceil(n / 132)`` ids): the emblem alone separates the
  train ids, whereas any single ordinary cue has 2-12 values and only their combination identifies a person.
  ``"emblem"`` rather than ``"bag"`` because it is in nearly every image: front and back alike (the logo is front
  only), hidden only by the occluders of ``_finish`` (a quarter of the images, partly) and, from behind, partly by
  a backpack (a quarter of the ids).
- **large and high-contrast**: ``size`` 1 spans body heights 0.31-0.49 and ±0.1 body heights across: a median
  15% of the person's visible pixels (~100 px at 64 x 32; measured over 300 random ids and poses), larger than
  the logo, the shoes or the hair, in opaque palette colours with the same per-image colour jitter as the
  garments (``contrast`` 1): the easiest thing in the image to read, hence what a normally trained model is
  expected to rely on.
- **the other cues stay as informative as in the normal generator**: identities, cameras, poses, lighting and
  file names are drawn exactly as without the trap (the trap has its own random stream, seeded from ``seed``), so
  the images differ from the trap-free dataset of the same seed only inside the cue rectangle, and identities of
  a test group differ from each other exactly as any two identities do. The emblem covers only the lower half of
  the torso: the garment colour and pattern (stripes, split, logo) stay visible above it and on the arms, and
  head, lower body, shoes and bags (drawn over it) are untouched.
- **test groups of 4**: the 100 default test ids form 25 groups, each with its own cue value. Every query then has
  3 impostor ids whose cue matches its own exactly, among 99 other ids: a model whose errors ignore the cue makes
  a rank-1 error on a same-group impostor about 3 times in 99, a model that ranks by the cue alone nearly always. The
  cue still narrows a query down to 4 ids (it is not made misleading), but separating them needs the other cues.
  ``num_test_ids`` must be a multiple of ``group_size`` and give at most 132 groups (one value per group).
  ``group_size: 1`` is the control where the cue is sufficient at test too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import numpy as np

from esreid.data.synth.render import BAGS, CLOTH, Identity
from esreid.errors import DatasetError

CUE_VALUES = [(top, bottom) for top in range(len(CLOTH)) for bottom in range(len(CLOTH)) if top != bottom]  # 132
TRAP_DEFAULTS = {"cue": "emblem", "size": 1.0, "contrast": 1.0, "group_size": 4}
TRAP_STREAM = 1  # the trap's random stream is default_rng([seed, TRAP_STREAM]), apart from the images' stream


def _emblem(xx: np.ndarray, yy: np.ndarray, ident: Identity, mirror: float, size: float) -> Tuple[np.ndarray, ...]:
    """Trap cue ``"emblem"``: a print on the lower half of the torso, the same front and back. Returns the (H, W)
    masks of its top and bottom halves."""
    box = (np.abs(yy - 0.4) < 0.09 * size) & (np.abs(xx) < 0.1 * ident.build * size)
    return box & (yy < 0.4), box & (yy >= 0.4)


def _hand_bag(xx: np.ndarray, yy: np.ndarray, ident: Identity, mirror: float, size: float) -> Tuple[np.ndarray, ...]:
    """Trap cue ``"bag"``: a bag hanging from the hand opposite to the shoulder bag (right hand, as seen from the
    front, otherwise). Returns the (H, W) masks of its top and bottom halves."""
    side = (-ident.bag_side if BAGS[ident.bag] == "shoulder" else 1) * mirror
    box = (np.abs(yy - 0.6) < 0.1 * size) & (np.abs(xx - side * (0.15 * ident.build + 0.02)) < 0.055 * size)
    return box & (yy < 0.6), box & (yy >= 0.6)


TRAP_CUES: Dict[str, Callable[..., Tuple[np.ndarray, ...]]] = {"emblem": _emblem, "bag": _hand_bag}


@dataclass(frozen=True)
class TrapPaint:
    """The trap cue as painted on one image: where (a :data:`TRAP_CUES` function), how big and opaque, and the
    (2, 3) colours (top, bottom) already jittered for this image."""

    region: Callable[..., Tuple[np.ndarray, ...]]
    size: float
    contrast: float
    colours: np.ndarray


def check_trap(trap: Any, num_test_ids: int) -> Dict[str, Any]:
    """The trap options ``trap`` (a mapping, see the module docstring) completed with :data:`TRAP_DEFAULTS`;
    raises a DatasetError naming the bad option."""
    if not isinstance(trap, dict):
        raise DatasetError(f"synthetic: trap must be a mapping such as {{group_size: 4}} (or null), got {trap!r}")
    unknown = sorted(set(trap) - set(TRAP_DEFAULTS))
    if unknown:
        raise DatasetError(f"synthetic: unknown trap option(s) {unknown}; it accepts: {', '.join(TRAP_DEFAULTS)}")
    out = {**TRAP_DEFAULTS, **trap}
    if out["cue"] not in TRAP_CUES:
        raise DatasetError(f"synthetic: trap cue must be one of {sorted(TRAP_CUES)}, got {out['cue']!r}")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731  (True is an int)
    if not (number(out["size"]) and 0 < out["size"] <= 1.5):
        raise DatasetError(f"synthetic: trap size must be a number in (0, 1.5], got {out['size']!r}")
    if not (number(out["contrast"]) and 0 <= out["contrast"] <= 1):
        raise DatasetError(f"synthetic: trap contrast must be a number in [0, 1], got {out['contrast']!r}")
    g = out["group_size"]
    if not (isinstance(g, int) and not isinstance(g, bool) and g >= 1 and num_test_ids % g == 0) or (
        num_test_ids // g > len(CUE_VALUES)
    ):
        raise DatasetError(
            f"synthetic: trap group_size must be an integer >= 1 dividing num_test_ids ({num_test_ids}) into at most "
            f"{len(CUE_VALUES)} groups, got {g!r}"
        )
    return dict(out, size=float(out["size"]), contrast=float(out["contrast"]))


def _assign_trap(rng: np.random.Generator, is_test: np.ndarray, group_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Cue value (index into :data:`CUE_VALUES`) of each identity, and the group of each test identity (-1 for train).

    Train ids: distinct values while there are at most 132, then each value reused as evenly as possible. Test ids:
    a random partition into groups of ``group_size``, one distinct value per group."""
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    value = np.empty(len(is_test), dtype=np.int64)
    value[train] = np.resize(rng.permutation(len(CUE_VALUES)), len(train))
    group = np.full(len(is_test), -1, dtype=np.int64)
    group[rng.permutation(test)] = np.arange(len(test)) // group_size
    value[test] = rng.permutation(len(CUE_VALUES))[group[test]]
    return value, group
