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
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

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


def _draw_person(img: np.ndarray, ident: Identity, rng: np.random.Generator) -> None:
    """Paint one pedestrian into ``img`` (H, W, 3) in place, with per-image pose and view jitter."""
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


def render_person(ident: Identity, cam: Camera, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One image of ``ident`` seen by ``cam``: uint8 (H, W, 3)."""
    img = _background(cam, rng, height, width)
    _draw_person(img, ident, rng)
    return _finish(img, cam, rng)


def render_junk(ident: Identity, cam: Camera, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A bad detection (Market pid -1): a small part of a person blown up to full size. uint8 (H, W, 3)."""
    full = render_person(ident, cam, rng, height, width)
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
        raise ValueError(f"synthetic: num_train_ids and num_test_ids must be >= 1, got {num_train_ids}, {num_test_ids}")
    if num_train_ids + num_test_ids > MAX_PID:
        total = num_train_ids + num_test_ids
        raise ValueError(f"synthetic: at most {MAX_PID} identities in total (Market pid range), got {total}")
    if images_per_id < 4:
        raise ValueError(f"synthetic: images_per_id must be >= 4 (query + match in 2 cameras), got {images_per_id}")
    if height < 32 or width < 16:
        raise ValueError(f"synthetic: images must be at least 32x16, got {height}x{width}")


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
) -> Dict[str, Any]:
    """Write a synthetic Market-1501-style dataset into ``root`` (created if needed); returns the marker contents.

    Args:
        images_per_id: mean images per identity; each id gets ``round(U(0.6, 1.4) * images_per_id)`` images
            (at least 2 for train ids, 4 for test ids), so some train ids have fewer than K images.
        num_junk: pid -1 images in the gallery (dropped by the parser, as in Market).
        num_distractors: pid 0000 images in the gallery.

    Idempotent: when ``root/synthetic.json`` holds the same parameters nothing is written; when they differ the
    three split folders are deleted and regenerated. A split folder present without the marker (a real dataset?)
    is never touched: that raises a DatasetError.
    """
    _check_params(num_train_ids, num_test_ids, images_per_id, height, width)
    params = {
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
    marker = os.path.join(root, MARKER)
    folders = [os.path.join(root, f) for f in SPLIT_FOLDERS.values()]
    if os.path.isfile(marker):
        try:
            with open(marker, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {}
        if old.get("params") == params:
            return old
        os.remove(marker)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        existing = [f for f in folders if os.path.exists(f)]
        if existing:
            raise DatasetError(
                f"synthetic: {existing[0]} exists but {marker} does not: refusing to overwrite a dataset this "
                "generator did not write (choose another root or delete the folder)"
            )
    for folder in folders:
        os.makedirs(folder, exist_ok=True)

    rng = np.random.default_rng(seed)
    cameras = [sample_camera(rng) for _ in range(NUM_CAMS)]
    identities: List[Identity] = []
    seen = set()
    while len(identities) < num_train_ids + num_test_ids:
        ident = sample_identity(rng)
        if ident.cues() not in seen:
            seen.add(ident.cues())
            identities.append(ident)
    pids = np.sort(rng.choice(np.arange(1, MAX_PID + 1), size=len(identities), replace=False))
    is_test = np.zeros(len(identities), dtype=bool)
    is_test[rng.choice(len(identities), size=num_test_ids, replace=False)] = True  # train/test ids interleave
    name = _Namer(rng)
    counts = {split: [set(), 0] for split in SPLIT_FOLDERS}

    def write(split: str, pid: int, cam: int, image: np.ndarray) -> None:
        Image.fromarray(image).save(os.path.join(root, SPLIT_FOLDERS[split], name(pid, cam)), quality=90)
        if pid >= 0:
            counts[split][0].add(pid)
            counts[split][1] += 1

    for ident, pid, test in zip(identities, pids.tolist(), is_test.tolist()):
        lo, hi = max(4 if test else 2, round(0.6 * images_per_id)), max(4 if test else 2, round(1.4 * images_per_id))
        n = int(rng.integers(lo, hi + 1))
        min_per_cam = 2 if test else 1  # test: one query + at least one gallery image per camera
        num_cams = int(rng.integers(2, min(4 if test else NUM_CAMS, n // min_per_cam) + 1))
        queried = set()
        for cam in _split_cameras(rng, n, num_cams, min_per_cam):
            split = "train"
            if test:
                split = "gallery" if cam in queried else "query"
                queried.add(cam)
            write(split, pid, cam, render_person(ident, cameras[cam], rng, height, width))
    test_ids = [i for i in range(len(identities)) if is_test[i]]
    for _ in range(num_junk):
        cam = int(rng.integers(NUM_CAMS))
        write("gallery", -1, cam, render_junk(identities[int(rng.choice(test_ids))], cameras[cam], rng, height, width))
    for _ in range(num_distractors):
        cam = int(rng.integers(NUM_CAMS))
        write("gallery", 0, cam, render_distractor(cameras[cam], rng, height, width))

    info = {"params": params, "counts": {split: [len(ids), n] for split, (ids, n) in counts.items()}}
    with open(marker + ".tmp", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    os.replace(marker + ".tmp", marker)  # the marker appears only once everything is written
    return info


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
            if isinstance(value, bool) or not isinstance(value, type(params[key].default)):
                return f"option {key!r}: expected {type(params[key].default).__name__}, got {value!r}"
        bound = {k: p.default for k, p in params.items() if k != "root"} | options
        try:
            _check_params(bound["num_train_ids"], bound["num_test_ids"], bound["images_per_id"], bound["height"],
                          bound["width"])
        except ValueError as e:
            return str(e)
        return None

    def __init__(self, root: str, verbose: bool = True, **options: Any):
        folder = os.path.join(root, "synthetic")
        info = generate_synthetic_market(folder, **options)
        self.published = {split: tuple(c) for split, c in info["counts"].items()}
        super().__init__(folder, verbose=verbose)
