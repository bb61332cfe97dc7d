"""Synthetic pedestrians written in the exact Market-1501 layout, for demos and tests without downloads.

:func:`generate_synthetic_market` draws identities as combinations of attribute cues (skin, hair colour and length,
upper-body colour + pattern + second colour, lower-body colour + kind, shoe colour, bag kind + colour + side, body
height and build). Attributes are drawn independently from small palettes, so identities share some cues and
differ in others: no single cue identifies a person, a model has to combine them. Each image renders the person
under a camera-specific background and colour cast, with per-image view (front/back: logo and backpack look
different), scale/shift/stride jitter, lighting, clutter, sensor noise and random occlusion.

Layout under the output folder (Market-1501 naming ``0002_c1s1_000451_03.jpg``: pid, camera 1..6, sequence, frame,
bounding box)::

    bounding_box_train/   train ids (every id in >= 2 cameras)
    query/                one image per (test id, camera)
    bounding_box_test/    the other images of the test ids (>= 1 per query camera, so every query has a match in
                          another camera), pid 0000 distractors (background / fragments) and pid -1 junk (bad crops
                          of test people)
    synthetic.json        the generation parameters and split counts; written last, so it marks a complete dataset

Train and test ids are disjoint and drawn from 1..1501 (the Market pid range checked by the parser).
:class:`SyntheticMarket` (registry name ``"synthetic"``) generates into ``<root>/synthetic`` when needed and parses
it with :class:`~esreid.data.datasets.market1501.Market1501`.

The output folder only ever appears complete: the dataset is written into a hidden sibling folder
``.<name>.partial-<host>-<pid>`` and renamed into place once its marker is written; a generator killed midway leaves
only that sibling, which the next call removes (its process is gone) before generating again.

Saliency trap (``trap={...}``, off by default)
----------------------------------------------
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

import inspect
import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from esreid.data.base import DATASETS, DatasetError
from esreid.data.datasets.market1501 import Market1501

FORMAT_VERSION = 1
MARKER = "synthetic.json"
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
NUM_CAMS = 6
MAX_PID = 1501

# --------------------------------------------------------------------------------------------------------------
# Palettes (RGB)
# --------------------------------------------------------------------------------------------------------------
SKIN = np.array([[241, 204, 177], [224, 172, 130], [176, 122, 86], [110, 74, 50]], dtype=np.float32)
HAIR = np.array([[25, 20, 18], [90, 60, 35], [200, 160, 90], [140, 140, 140], [150, 50, 30]], dtype=np.float32)
CLOTH = np.array(
    [
        [200, 30, 35], [30, 60, 170], [40, 140, 60], [235, 210, 60], [245, 245, 245], [30, 30, 35],
        [130, 130, 135], [240, 130, 30], [120, 50, 150], [90, 170, 210], [140, 90, 50], [230, 140, 170],
    ],
    dtype=np.float32,
)  # fmt: skip
SHOES = np.array([[20, 20, 20], [240, 240, 240], [120, 70, 40], [60, 80, 160]], dtype=np.float32)
PATTERNS = ("plain", "stripes", "split", "logo")
LOWER_KINDS = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "shoulder")
CUE_VALUES = [(top, bottom) for top in range(len(CLOTH)) for bottom in range(len(CLOTH)) if top != bottom]  # 132
TRAP_DEFAULTS = {"cue": "emblem", "size": 1.0, "contrast": 1.0, "group_size": 4}
TRAP_STREAM = 1  # the trap's random stream is default_rng([seed, TRAP_STREAM]), apart from the images' stream


@dataclass(frozen=True)
class Identity:
    """Attribute cues of one person (palette indices and shape factors)."""

    skin: int
    hair: int
    long_hair: bool
    upper: int
    upper2: int  # second colour of the pattern
    pattern: int
    lower: int
    lower_kind: int
    shoes: int
    bag: int
    bag_colour: int
    bag_side: int  # -1 = left, +1 = right (as seen from the front)
    stature: float  # body height factor
    build: float  # body width factor

    def cues(self) -> Tuple:
        """The discrete cues that define the identity (two identities never share all of them)."""
        bag = (self.bag, self.bag_colour if self.bag else -1, self.bag_side if self.bag == 2 else 0)
        upper2 = self.upper2 if self.pattern else -1
        garments = (self.upper, upper2, self.pattern, self.lower, self.lower_kind, self.shoes)
        return (self.skin, self.hair, self.long_hair, *garments, *bag)


def sample_identity(rng: np.random.Generator) -> Identity:
    upper, upper2 = rng.choice(len(CLOTH), size=2, replace=False)
    return Identity(
        skin=int(rng.integers(len(SKIN))),
        hair=int(rng.integers(len(HAIR))),
        long_hair=bool(rng.random() < 0.35),
        upper=int(upper),
        upper2=int(upper2),
        pattern=int(rng.integers(len(PATTERNS))),
        lower=int(rng.integers(len(CLOTH))),
        lower_kind=int(rng.choice(len(LOWER_KINDS), p=[0.6, 0.2, 0.2])),
        shoes=int(rng.integers(len(SHOES))),
        bag=int(rng.choice(len(BAGS), p=[0.5, 0.25, 0.25])),
        bag_colour=int(rng.integers(len(CLOTH))),
        bag_side=int(rng.choice([-1, 1])),
        stature=float(rng.uniform(0.88, 1.0)),
        build=float(rng.uniform(0.85, 1.2)),
    )


@dataclass(frozen=True)
class Camera:
    """Scene and illumination of one camera."""

    wall: np.ndarray  # (3,) background colour
    floor: np.ndarray  # (3,) ground colour
    horizon: float  # ground starts at this fraction of the height
    cast: np.ndarray  # (3,) per-channel gain (colour cast)
    gain: float  # brightness
    stripes: int  # period (pixels) of vertical background texture, 0 = none


def sample_camera(rng: np.random.Generator) -> Camera:
    return Camera(
        wall=rng.uniform(60, 200, 3).astype(np.float32),
        floor=rng.uniform(50, 170, 3).astype(np.float32),
        horizon=float(rng.uniform(0.55, 0.8)),
        cast=rng.uniform(0.8, 1.2, 3).astype(np.float32),
        gain=float(rng.uniform(0.75, 1.15)),
        stripes=int(rng.choice([0, 0, 6, 10, 16])),
    )


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------
def _background(cam: Camera, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 (H, W, 3): wall above the horizon, floor below, optional texture and clutter boxes."""
    img = np.empty((height, width, 3), dtype=np.float32)
    h0 = int(cam.horizon * height)
    img[:h0] = cam.wall
    img[h0:] = cam.floor
    if cam.stripes:
        shade = ((np.arange(width) + int(rng.integers(cam.stripes))) // (cam.stripes // 2)) % 2
        img[:h0] *= (1.0 - 0.12 * shade)[None, :, None]
    for _ in range(int(rng.integers(0, 3))):  # clutter
        y0, x0 = int(rng.integers(0, height - 4)), int(rng.integers(0, width - 4))
        y1, x1 = y0 + int(rng.integers(4, height // 3)), x0 + int(rng.integers(4, width // 2))
        img[y0:y1, x0:x1] = rng.uniform(40, 210, 3)
    return img


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


def _draw_person(img: np.ndarray, ident: Identity, rng: np.random.Generator, trap: Optional[TrapPaint] = None) -> None:
    """Paint one pedestrian into ``img`` (H, W, 3) in place, with per-image pose and view jitter; ``trap`` adds the
    trap cue without drawing from ``rng`` (the image is otherwise the same)."""
    height, width = img.shape[:2]
    ph = height * 0.94 * ident.stature * rng.uniform(0.85, 1.0)  # person height in pixels
    foot = height * (0.985 + rng.uniform(-0.04, 0.0))
    top = foot - ph
    cx = width / 2 + rng.uniform(-0.12, 0.12) * width
    back = rng.random() < 0.5  # seen from behind
    stride = rng.uniform(0.0, 1.0)
    yy = (np.arange(height, dtype=np.float32)[:, None] - top) / ph  # body-height units, 0 = top of head
    xx = (np.arange(width, dtype=np.float32)[None, :] - cx) / ph  # 0 = body axis
    mirror = -1.0 if back else 1.0  # left/right swap when seen from behind

    def jitter(c: np.ndarray) -> np.ndarray:
        return np.clip(c + rng.normal(0, 6, 3), 0, 255)

    skin, hair = jitter(SKIN[ident.skin]), jitter(HAIR[ident.hair])
    upper, upper2 = jitter(CLOTH[ident.upper]), jitter(CLOTH[ident.upper2])
    lower, shoes, bag = jitter(CLOTH[ident.lower]), jitter(SHOES[ident.shoes]), jitter(CLOTH[ident.bag_colour])
    b = ident.build

    def band(y0: float, y1: float) -> np.ndarray:
        return (yy >= y0) & (yy < y1)

    # long hair hangs behind the head and shoulders
    if ident.long_hair:
        img[band(0.03, 0.27 if back else 0.2) & (np.abs(xx) < 0.07)] = hair
    # legs (spread grows towards the feet with the stride), lower garment, shoes
    t = np.clip((yy - 0.5) / 0.42, 0, 1)
    spread = 0.05 * b + 0.05 * stride * t
    legs = band(0.5, 0.97) & (np.abs(np.abs(xx) - spread) < 0.042 * b)
    hips = band(0.48, 0.58) & (np.abs(xx) < 0.105 * b)
    kind = LOWER_KINDS[ident.lower_kind]
    img[legs] = skin
    if kind == "trousers":
        img[(legs & band(0.5, 0.92)) | hips] = lower
    elif kind == "shorts":
        img[(legs & band(0.5, 0.68)) | hips] = lower
    else:  # skirt: a trapezoid
        img[band(0.48, 0.72) & (np.abs(xx) < (0.105 + 0.08 * (yy - 0.48)) * b)] = lower
    img[band(0.92, 0.98) & (np.abs(np.abs(xx) - spread) < 0.05 * b)] = shoes
    # torso (shoulders wider than the waist), pattern, arms and hands
    torso = band(0.15, 0.5) & (np.abs(xx) < (0.13 - 0.05 * (yy - 0.15)) * b)
    img[torso] = upper
    pattern = PATTERNS[ident.pattern]
    if pattern == "stripes":
        img[torso & (np.floor(yy * 28) % 2 == 0)] = upper2
    elif pattern == "split":
        img[torso & (xx * mirror < 0)] = upper2
    elif pattern == "logo" and not back:
        img[band(0.21, 0.3) & (np.abs(xx) < 0.045)] = upper2
    swing = 0.02 * stride
    for side in (-1.0, 1.0):
        arm_x = side * (0.15 * b + 0.02) + side * swing * 0.5
        img[band(0.16, 0.46) & (np.abs(xx - arm_x) < 0.028)] = upper
        img[band(0.46, 0.52) & (np.abs(xx - arm_x) < 0.024)] = skin
    if trap is not None:  # under the bags, like a print under a strap
        for mask, colour in zip(trap.region(xx, yy, ident, mirror, trap.size), trap.colours):
            img[mask] = (1 - trap.contrast) * img[mask] + trap.contrast * colour
    # bags (drawn before the head so hair stays on top)
    if BAGS[ident.bag] == "backpack":
        if back:
            img[band(0.18, 0.43) & (np.abs(xx) < 0.095 * b)] = bag
        else:
            img[band(0.15, 0.34) & (np.abs(np.abs(xx) - 0.075 * b) < 0.012)] = bag  # straps
    elif BAGS[ident.bag] == "shoulder":
        side = ident.bag_side * mirror
        img[band(0.4, 0.56) & (np.abs(xx - side * 0.16 * b) < 0.05)] = bag
        # strap from the opposite shoulder (y=0.16, x=-side*0.1) to the bag top (y=0.4, x=side*0.16)
        sx0, sy0, sx1, sy1 = -side * 0.1 * b, 0.16, side * 0.16 * b, 0.4
        dist = np.abs((xx - sx0) * (sy1 - sy0) - (yy - sy0) * (sx1 - sx0)) / np.hypot(sx1 - sx0, sy1 - sy0)
        img[band(sy0, sy1) & (dist < 0.01)] = bag
    # neck, head, hair
    img[band(0.12, 0.16) & (np.abs(xx) < 0.025)] = skin
    head = ((xx / 0.05) ** 2 + ((yy - 0.075) / 0.065) ** 2) < 1
    img[head] = hair if back else skin
    if not back:
        img[head & (yy < 0.05)] = hair


def _finish(img: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Occlusion, camera colour cast and brightness, noise -> uint8 (H, W, 3)."""
    height, width = img.shape[:2]
    if rng.random() < 0.25:  # an occluder from the bottom or one side
        colour = rng.uniform(30, 220, 3)
        if rng.random() < 0.5:
            img[int(height * rng.uniform(0.7, 0.85)) :] = colour
        else:
            w = int(width * rng.uniform(0.15, 0.35))
            if rng.random() < 0.5:
                img[:, :w] = colour
            else:
                img[:, width - w :] = colour
    ramp = np.linspace(-1, 1, height, dtype=np.float32) * np.float32(rng.uniform(-0.15, 0.15))  # vertical light falloff
    gain = np.float32(cam.gain * rng.uniform(0.9, 1.1)) * (1 + ramp)[:, None, None] * cam.cast
    img = img * gain + 4 * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_person(
    ident: Identity, cam: Camera, rng: np.random.Generator, height: int, width: int, trap: Optional[TrapPaint] = None
) -> np.ndarray:
    """One image of ``ident`` seen by ``cam`` (with the trap cue ``trap``, if any): uint8 (H, W, 3)."""
    img = _background(cam, rng, height, width)
    _draw_person(img, ident, rng, trap)
    return _finish(img, cam, rng)


def render_junk(
    ident: Identity, cam: Camera, rng: np.random.Generator, height: int, width: int, trap: Optional[TrapPaint] = None
) -> np.ndarray:
    """A bad detection (Market pid -1): a small part of a person blown up to full size. uint8 (H, W, 3)."""
    full = render_person(ident, cam, rng, height, width, trap)
    h = int(height * rng.uniform(0.25, 0.45))
    w = int(width * rng.uniform(0.4, 0.7))
    y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    crop = Image.fromarray(full[y0 : y0 + h, x0 : x0 + w]).resize((width, height), Image.BILINEAR)
    return np.asarray(crop)


def render_distractor(cam: Camera, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A false detection (Market pid 0): background and clutter, no person. uint8 (H, W, 3)."""
    img = _background(cam, rng, height, width)
    for _ in range(int(rng.integers(1, 4))):
        y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        img[y0 : y0 + int(rng.integers(8, height // 2)), x0 : x0 + int(rng.integers(4, width // 2))] = rng.uniform(
            30, 220, 3
        )
    return _finish(img, cam, rng)


# --------------------------------------------------------------------------------------------------------------
# Writing the Market-1501 layout
# --------------------------------------------------------------------------------------------------------------
class _Namer:
    """Market names ``<pid>_c<cam>s<seq>_<frame:06d>_<bbox:02d>.jpg`` with increasing, unique frames per camera."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.frame = [int(rng.integers(1, 500)) for _ in range(NUM_CAMS)]

    def __call__(self, pid: int, cam: int) -> str:
        self.frame[cam] += int(self.rng.integers(1, 60))
        frame = self.frame[cam]
        seq = 1 + frame // 25000  # Market sequences are separate recordings; a new one every 25000 frames here
        pid_str = "-1" if pid < 0 else f"{pid:04d}"
        return f"{pid_str}_c{cam + 1}s{seq}_{frame:06d}_01.jpg"


def _split_cameras(rng: np.random.Generator, num_images: int, num_cams: int, min_per_cam: int) -> List[int]:
    """Camera (0-based) of each image: ``num_cams`` distinct cameras, each with at least ``min_per_cam`` images."""
    cams = rng.choice(NUM_CAMS, size=num_cams, replace=False)
    assignment = list(np.repeat(cams, min_per_cam)) + list(rng.choice(cams, size=num_images - num_cams * min_per_cam))
    return [int(c) for c in assignment]


def _check_params(num_train_ids: int, num_test_ids: int, images_per_id: int, height: int, width: int) -> None:
    if num_train_ids < 1 or num_test_ids < 1:
        raise DatasetError(
            f"synthetic: num_train_ids and num_test_ids must be >= 1, got {num_train_ids}, {num_test_ids}"
        )
    if num_train_ids + num_test_ids > MAX_PID:
        total = num_train_ids + num_test_ids
        raise DatasetError(f"synthetic: at most {MAX_PID} identities in total (Market pid range), got {total}")
    if images_per_id < 4:
        raise DatasetError(f"synthetic: images_per_id must be >= 4 (query + match in 2 cameras), got {images_per_id}")
    if height < 32 or width < 16:
        raise DatasetError(f"synthetic: images must be at least 32x16, got {height}x{width}")


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


def _render(folder: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """Write the dataset ``params`` describes into the new folder ``folder``, marker last; returns the marker."""
    for sub in SPLIT_FOLDERS.values():
        os.makedirs(os.path.join(folder, sub))
    height, width = params["height"], params["width"]
    rng = np.random.default_rng(params["seed"])
    cameras = [sample_camera(rng) for _ in range(NUM_CAMS)]
    identities: List[Identity] = []
    seen = set()
    while len(identities) < params["num_train_ids"] + params["num_test_ids"]:
        ident = sample_identity(rng)
        if ident.cues() not in seen:
            seen.add(ident.cues())
            identities.append(ident)
    pids = np.sort(rng.choice(np.arange(1, MAX_PID + 1), size=len(identities), replace=False))
    is_test = np.zeros(len(identities), dtype=bool)
    is_test[rng.choice(len(identities), size=params["num_test_ids"], replace=False)] = True  # ids interleave
    name = _Namer(rng)
    counts = {split: [set(), 0] for split in SPLIT_FOLDERS}
    trap = params.get("trap")
    if trap:
        trap_rng = np.random.default_rng([params["seed"], TRAP_STREAM])
        cue_value, group = _assign_trap(trap_rng, is_test, trap["group_size"])

    def paint(i: int) -> Optional[TrapPaint]:
        """The trap cue of identity ``i`` for one image (its colours jittered like the garments'), or None."""
        if not trap:
            return None
        colours = np.clip(CLOTH[list(CUE_VALUES[cue_value[i]])] + trap_rng.normal(0, 6, (2, 3)), 0, 255)
        return TrapPaint(TRAP_CUES[trap["cue"]], trap["size"], trap["contrast"], colours)

    def write(split: str, pid: int, cam: int, image: np.ndarray) -> None:
        Image.fromarray(image).save(os.path.join(folder, SPLIT_FOLDERS[split], name(pid, cam)), quality=90)
        if pid >= 0:
            counts[split][0].add(pid)
            counts[split][1] += 1

    for i, (ident, pid, test) in enumerate(zip(identities, pids.tolist(), is_test.tolist())):
        least, mean = 4 if test else 2, params["images_per_id"]
        lo, hi = max(least, round(0.6 * mean)), max(least, round(1.4 * mean))
        n = int(rng.integers(lo, hi + 1))
        min_per_cam = 2 if test else 1  # test: one query + at least one gallery image per camera
        num_cams = int(rng.integers(2, min(4 if test else NUM_CAMS, n // min_per_cam) + 1))
        queried = set()
        for cam in _split_cameras(rng, n, num_cams, min_per_cam):
            split = "train"
            if test:
                split = "gallery" if cam in queried else "query"
                queried.add(cam)
            write(split, pid, cam, render_person(ident, cameras[cam], rng, height, width, paint(i)))
    test_ids = [i for i in range(len(identities)) if is_test[i]]
    for _ in range(params["num_junk"]):
        cam = int(rng.integers(NUM_CAMS))
        i = int(rng.choice(test_ids))
        write("gallery", -1, cam, render_junk(identities[i], cameras[cam], rng, height, width, paint(i)))
    for _ in range(params["num_distractors"]):
        cam = int(rng.integers(NUM_CAMS))
        write("gallery", 0, cam, render_distractor(cameras[cam], rng, height, width))

    info: Dict[str, Any] = {"params": params, "counts": {s: [len(ids), n] for s, (ids, n) in counts.items()}}
    if trap:
        info["trap"] = {
            "test_groups": {str(pid): int(group[i]) for i, pid in enumerate(pids.tolist()) if is_test[i]},
            "cue_colours": {str(pid): list(CUE_VALUES[cue_value[i]]) for i, pid in enumerate(pids.tolist())},
        }
    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return info


# --------------------------------------------------------------------------------------------------------------
# The output folder: generated beside it, renamed into place
# --------------------------------------------------------------------------------------------------------------
def _read_marker(root: str) -> Optional[Dict[str, Any]]:
    """The marker under ``root`` (``{}`` when unreadable), or None when there is none."""
    marker = os.path.join(root, MARKER)
    if not os.path.isfile(marker):
        return None
    try:
        with open(marker, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _check_replaceable(root: str, has_marker: bool) -> None:
    """Raise a DatasetError unless ``root`` is missing, empty, or holds only a dataset this generator wrote."""
    if not os.path.exists(root):
        return
    if not os.path.isdir(root):
        raise DatasetError(f"synthetic: {root} exists and is not a folder (choose another root)")
    entries = set(os.listdir(root))
    if has_marker:
        foreign = sorted(entries - set(SPLIT_FOLDERS.values()) - {MARKER})
        if foreign:
            raise DatasetError(
                f"synthetic: {root} holds {foreign[0]!r} besides the generated dataset: move it elsewhere before "
                "regenerating with other options (the folder is replaced as a whole), or choose another root"
            )
        return
    split = sorted(entries & set(SPLIT_FOLDERS.values()))
    if split:
        raise DatasetError(
            f"synthetic: {os.path.join(root, split[0])} exists but {os.path.join(root, MARKER)} does not: refusing "
            "to overwrite a dataset this generator did not write (choose another root or delete the folder)"
        )
    if entries:
        raise DatasetError(
            f"synthetic: {root} is not empty ({sorted(entries)[0]!r}) and holds no synthetic dataset: refusing to "
            "generate into it (choose a new or empty folder)"
        )


def _sibling(root: str, kind: str) -> str:
    """``<parent>/.<name>.<kind>-<host>-<pid>``: a folder of this process beside ``root`` (kind: partial | old)."""
    parent, base = os.path.split(root)
    return os.path.join(parent, f".{base}.{kind}-{socket.gethostname()}-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale(root: str) -> None:
    """Delete the partial / replaced folders beside ``root`` left by generators of this host that are gone (killed),
    or by this process (an earlier call that failed). A live generator's folders are left alone."""
    parent, base = os.path.split(root)
    pattern = re.compile(rf"\.{re.escape(base)}\.(partial|old)-(.+)-(\d+)")
    for entry in os.listdir(parent):
        m = pattern.fullmatch(entry)
        if m and m.group(2) == socket.gethostname() and (int(m.group(3)) == os.getpid() or not _alive(int(m.group(3)))):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _same_dataset(root: str, params: Dict[str, Any]) -> bool:
    marker = _read_marker(root)
    return marker is not None and marker.get("params") == params


def _put_in_place(partial: str, root: str, params: Dict[str, Any]) -> None:
    """Rename the finished ``partial`` folder to ``root`` (missing, empty, or a dataset this generator wrote)."""
    if _same_dataset(root, params):  # another generator (a sibling process) finished the same dataset meanwhile
        return
    if os.path.isdir(root) and os.listdir(root):  # the previous dataset: moved aside in one step, then deleted
        old = _sibling(root, "old")
        os.rename(root, old)
        os.rename(partial, root)
        shutil.rmtree(old)
        return
    try:
        os.rename(partial, root)
    except OSError as e:
        if not _same_dataset(root, params):  # (same: another generator got there first)
            raise DatasetError(
                f"synthetic: could not rename the generated {partial} to {root} ({e.strerror}; is {root} a mount "
                "point?): choose a folder inside it"
            ) from e


def generate_synthetic_market(
    root: str,
    num_train_ids: int = 120,
    num_test_ids: int = 100,
    images_per_id: int = 10,
    height: int = 128,
    width: int = 64,
    seed: int = 0,
    num_junk: int = 40,
    num_distractors: int = 40,
    trap: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Write a synthetic Market-1501-style dataset into the folder ``root``; returns the marker contents.

    Args:
        images_per_id: mean images per identity; each id gets ``round(U(0.6, 1.4) * images_per_id)`` images
            (at least 2 for train ids, 4 for test ids), so some train ids have fewer than K images.
        num_junk: pid -1 images in the gallery (dropped by the parser, as in Market).
        num_distractors: pid 0000 images in the gallery.
        trap: None (default) or the saliency-trap options ``{cue, size, contrast, group_size}``, missing ones from
            :data:`TRAP_DEFAULTS` (module docstring). The marker then also holds ``trap.test_groups`` (test pid ->
            group, see :func:`trap_groups`) and ``trap.cue_colours`` (pid -> top, bottom ``CLOTH`` index).

    Idempotent: when ``root/synthetic.json`` holds the same parameters nothing is written. Otherwise the dataset is
    generated beside ``root`` and renamed into place when complete (replacing, in one step, a dataset this
    generator wrote with other parameters), so ``root`` never holds a partial dataset. ``root`` must be missing,
    empty or such a dataset: anything else (a split folder without the marker: a real dataset?) raises a
    DatasetError and is not touched.
    """
    _check_params(num_train_ids, num_test_ids, images_per_id, height, width)
    params: Dict[str, Any] = {
        "version": FORMAT_VERSION,
        "num_train_ids": num_train_ids,
        "num_test_ids": num_test_ids,
        "images_per_id": images_per_id,
        "height": height,
        "width": width,
        "seed": seed,
        "num_junk": num_junk,
        "num_distractors": num_distractors,
    }
    if trap is not None:  # absent otherwise: markers of trap-free datasets are unchanged
        params["trap"] = check_trap(trap, num_test_ids)
    root = os.path.realpath(root)  # a symlinked root: generate beside (and replace) its target
    os.makedirs(os.path.dirname(root), exist_ok=True)
    _remove_stale(root)
    old = _read_marker(root)
    if old is not None and old.get("params") == params:
        return old
    _check_replaceable(root, old is not None)
    partial = _sibling(root, "partial")
    try:
        info = _render(partial, params)
        _put_in_place(partial, root, params)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone after the rename; otherwise unused or incomplete
    return info


def trap_groups(root: str) -> Dict[int, int]:
    """``{test pid: group}`` of the trap dataset generated in ``root`` (for the ``synthetic`` dataset:
    ``<data.root>/synthetic``); identities of a group share the trap cue."""
    info = _read_marker(os.path.realpath(root))
    if not info:
        raise DatasetError(f"synthetic: no readable {MARKER} in {root} (generate the dataset first)")
    if "trap" not in info:
        raise DatasetError(f"synthetic: {root} was generated without a trap (data.args: trap: {{...}})")
    return {int(pid): group for pid, group in info["trap"]["test_groups"].items()}


@DATASETS.register("synthetic")
class SyntheticMarket(Market1501):
    """Synthetic pedestrians in the Market-1501 layout under ``<root>/synthetic`` (generated when missing or when
    the options change), parsed by the Market-1501 loader. Options are those of :func:`generate_synthetic_market`.
    ``published`` holds the counts the generator wrote, so :meth:`check_counts` checks the parse against them.
    """

    name = "synthetic"
    title = "Synthetic Market-1501"

    @classmethod
    def check_options(cls, options: Dict[str, Any]) -> Optional[str]:
        """Options are :func:`generate_synthetic_market`'s keyword arguments, with their types and ranges."""
        params = inspect.signature(generate_synthetic_market).parameters
        unknown = sorted(set(options) - set(params) - {"root"}) + sorted(set(options) & {"root"})
        if unknown:
            return f"unknown option(s) {unknown}; it accepts: {', '.join(p for p in params if p != 'root')}"
        for key, value in options.items():
            default = params[key].default
            if default is not None and (isinstance(value, bool) or not isinstance(value, type(default))):
                return f"option {key!r}: expected {type(default).__name__}, got {value!r}"
        bound = {k: p.default for k, p in params.items() if k != "root"} | options
        try:
            _check_params(bound["num_train_ids"], bound["num_test_ids"], bound["images_per_id"], bound["height"],
                          bound["width"])
            if bound["trap"] is not None:
                check_trap(bound["trap"], bound["num_test_ids"])
        except DatasetError as e:
            return str(e)
        return None

    def __init__(self, root: str, verbose: bool = True, **options: Any):
        folder = os.path.join(root, "synthetic")
        info = generate_synthetic_market(folder, **options)
        self.published = {split: tuple(c) for split, c in info["counts"].items()}
        super().__init__(folder, verbose=verbose)
