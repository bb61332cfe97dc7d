"""Rendering of the synthetic pedestrians (:mod:`esreid.data.datasets.synthetic` writes them in the Market-1501
layout): identities as combinations of attribute cues (skin, hair colour and length, upper-body colour + pattern +
second colour, lower-body colour + kind, shoe colour, bag kind + colour + side, body height and build), drawn
independently from small palettes, so identities share some cues and differ in others: no single cue identifies a
person, a model has to combine them. Each image renders the person under a camera-specific background and colour
cast, with per-image view (front/back: logo and backpack look different), scale/shift/stride jitter, lighting,
clutter, sensor noise and random occlusion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from esreid.data.synth.trap import TrapPaint

NUM_CAMS = 6

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
