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

With a trap (``trap={...}``) also::

    query_cuefree/              every query image rendered again CUE-FREE (trap contrast 0, all other random
    bounding_box_test_cuefree/  draws identical, same file names): the images differ only where the cue shows
    cue_masks/<split folder>/   <image name>.png, the exact mask of the visible cue pixels (255 = cue) of every
                                train, query and gallery person image (not of junk or distractors)

``data.args: test_rendering: cuefree`` evaluates on the cue-free folders (parse time only: the same files).
``palette`` (``default``, ``dusk``, ``sepia``) recolours every image, cue-free twins included, not the cue masks: a
second domain for cross-domain and multi-dataset tests.

Train and test ids are disjoint and drawn from 1..1501 (the Market pid range checked by the parser).
:class:`SyntheticMarket` (registry name ``"synthetic"``) generates into ``<root>/synthetic`` when needed and parses
it with :class:`~esreid.data.datasets.market1501.Market1501`.

The output folder only ever appears complete: the dataset is written into a hidden sibling folder
(:func:`esreid.files.folder_sibling`) and renamed into place once its marker is written; a generator killed midway
leaves only that sibling, which the next call removes (its process is gone) before generating again.

The images come from :mod:`esreid.data.synth.render`; the saliency trap (``trap={...}``, off by default) is
:mod:`esreid.data.synth.trap`.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from esreid.data.base import DATASETS, DatasetError, ImageItem
from esreid.data.datasets.market1501 import Market1501
from esreid.data.synth.render import (
    CLOTH,
    DOMAINS,
    NUM_CAMS,
    Identity,
    apply_domain,
    render_distractor,
    render_junk,
    render_junk_pair,
    render_person,
    render_trap_pair,
    sample_camera,
    sample_identity,
)
from esreid.data.synth.trap import (
    CUE_VALUES,
    ON_TOP,
    TRAP_CUES,
    TRAP_STREAM,
    TrapPaint,
    _assign_trap,
    check_trap,
    patch_position,
)
from esreid.files import (
    StorageError,
    ensure_free_space,
    folder_sibling,
    move_folder_into_place,
    remove_stale_siblings,
)

# 2: trap datasets add the cue-free test rendering and the cue masks (the palette option, a parameter in the marker,
# recolours the images of any version and adds no folder)
FORMAT_VERSION = 2
MARKER = "synthetic.json"
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
CUE_FREE = "_cuefree"  # suffix of the cue-free test folders
MASKS = "cue_masks"  # cue_masks/<split folder>/<image name>.png
TEST_RENDERINGS = ("cue", "cuefree")  # data.args test_rendering
MAX_PID = 1501


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


# Bounds of a generated dataset, checked with the options before anything is written: MSMT17, the largest person set,
# has 126,441 images; the renderer draws people of at most 1024 pixels a side.
MAX_IMAGES = 200_000
MAX_SIDE = 1024


def max_images(num_train_ids: int, num_test_ids: int, images_per_id: int, num_junk: int, num_distractors: int) -> int:
    """The most images the generator can write with these options (each id gets at most round(1.4 x images_per_id),
    at least 2 per train and 4 per test id; see :func:`generate_synthetic_market`)."""
    most = round(1.4 * images_per_id)
    return num_train_ids * max(2, most) + num_test_ids * max(4, most) + num_junk + num_distractors


def estimated_bytes(num_images: int, height: int, width: int) -> int:
    """A generous bound of the disk space of ``num_images`` JPEGs (quality 90): measured at 0.10-0.29 bytes per
    RGB byte (256x128 down to 64x32), bounded here by a third of it plus a 4 kB file-system block per file."""
    return num_images * (height * width + 4096)


def _check_params(num_train_ids: int, num_test_ids: int, images_per_id: int, height: int, width: int,
                  num_junk: int = 0, num_distractors: int = 0) -> None:
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
    if height > MAX_SIDE or width > MAX_SIDE:
        raise DatasetError(f"synthetic: images must be at most {MAX_SIDE}x{MAX_SIDE}, got {height}x{width}")
    if num_junk < 0 or num_distractors < 0:
        raise DatasetError(f"synthetic: num_junk and num_distractors must be >= 0, got {num_junk}, {num_distractors}")
    most = max_images(num_train_ids, num_test_ids, images_per_id, num_junk, num_distractors)
    if most > MAX_IMAGES:
        raise DatasetError(f"synthetic: these options generate up to {most:,} images, more than the {MAX_IMAGES:,} "
                           f"allowed (MSMT17, the largest person set, has 126,441): lower images_per_id (now "
                           f"{images_per_id:,}), the numbers of ids or num_junk / num_distractors")


def _render(folder: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """Write the dataset ``params`` describes into the new folder ``folder``, marker last; returns the marker."""
    trap = params.get("trap")
    for sub in SPLIT_FOLDERS.values():
        os.makedirs(os.path.join(folder, sub))
        if trap:
            os.makedirs(os.path.join(folder, MASKS, sub))
    if trap:
        for split in ("query", "gallery"):
            os.makedirs(os.path.join(folder, SPLIT_FOLDERS[split] + CUE_FREE))
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
    if trap:
        trap_rng = np.random.default_rng([params["seed"], TRAP_STREAM])
        cue_value, group = _assign_trap(trap_rng, is_test, trap["group_size"])

    def paint(i: int) -> Optional[TrapPaint]:
        """The trap cue of identity ``i`` for one image (its colours jittered like the garments'), or None."""
        if not trap:
            return None
        colours = np.clip(CLOTH[list(CUE_VALUES[cue_value[i]])] + trap_rng.normal(0, 6, (2, 3)), 0, 255)
        moving = trap["cue"] == "patch"  # (only this cue draws a position: the other cues' streams stay as in v1)
        position = patch_position(trap_rng) if moving else (0.0, 0.0)
        return TrapPaint(TRAP_CUES[trap["cue"]], trap["size"], trap["contrast"], colours, position,
                         trap["cue"] in ON_TOP)

    domain = params.get("palette", "default")

    def write(split: str, pid: int, cam: int, image: np.ndarray, cue_free: Optional[np.ndarray] = None,
              mask: Optional[np.ndarray] = None) -> None:
        """One image (and, with a trap, its cue-free twin and cue mask) under the same Market name; the images in
        the colours of the palette (the mask is where the cue is, whatever its colours)."""
        sub, file = SPLIT_FOLDERS[split], name(pid, cam)
        Image.fromarray(apply_domain(image, domain)).save(os.path.join(folder, sub, file), quality=90)
        if cue_free is not None:
            Image.fromarray(apply_domain(cue_free, domain)).save(os.path.join(folder, sub + CUE_FREE, file),
                                                                 quality=90)
        if mask is not None:
            Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(folder, MASKS, sub, file[:-4] + ".png"))
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
            if not trap:
                write(split, pid, cam, render_person(ident, cameras[cam], rng, height, width))
                continue
            image, cue_free, mask = render_trap_pair(ident, cameras[cam], rng, height, width, paint(i))
            write(split, pid, cam, image, None if split == "train" else cue_free, mask)
    test_ids = [i for i in range(len(identities)) if is_test[i]]
    for _ in range(params["num_junk"]):
        cam = int(rng.integers(NUM_CAMS))
        i = int(rng.choice(test_ids))
        if not trap:
            write("gallery", -1, cam, render_junk(identities[i], cameras[cam], rng, height, width))
            continue
        write("gallery", -1, cam, *render_junk_pair(identities[i], cameras[cam], rng, height, width, paint(i)))
    for _ in range(params["num_distractors"]):
        cam = int(rng.integers(NUM_CAMS))
        image = render_distractor(cameras[cam], rng, height, width)
        write("gallery", 0, cam, image, image if trap else None)  # no person: the same in both renderings

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
        written = {*SPLIT_FOLDERS.values(), MARKER, MASKS, *(SPLIT_FOLDERS[s] + CUE_FREE for s in ("query", "gallery"))}
        foreign = sorted(entries - written)
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


def _same_dataset(root: str, params: Dict[str, Any]) -> bool:
    marker = _read_marker(root)
    return marker is not None and marker.get("params") == params


def _put_in_place(partial: str, root: str, params: Dict[str, Any]) -> None:
    """Rename the finished ``partial`` folder to ``root`` (missing, empty, or a dataset this generator wrote)."""
    if _same_dataset(root, params):  # another generator (a sibling process) finished the same dataset meanwhile
        return
    try:
        move_folder_into_place(partial, root)
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
    palette: str = "default",
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
        palette: the domain, a colour transform of every image (:data:`esreid.data.synth.render.DOMAINS`:
            ``default``, ``dusk``, ``sepia``): two datasets with other palettes (and seeds) are two domains, for
            cross-domain and multi-dataset tests.

    Idempotent: when ``root/synthetic.json`` holds the same parameters nothing is written. Otherwise the dataset is
    generated beside ``root`` and renamed into place when complete (replacing, in one step, a dataset this
    generator wrote with other parameters), so ``root`` never holds a partial dataset. ``root`` must be missing,
    empty or such a dataset: anything else (a split folder without the marker: a real dataset?) raises a
    DatasetError and is not touched.
    """
    _check_params(num_train_ids, num_test_ids, images_per_id, height, width, num_junk, num_distractors)
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
    if palette not in DOMAINS:
        raise DatasetError(f"synthetic: palette {palette!r}: expected one of {', '.join(DOMAINS)}")
    if palette != "default":  # absent otherwise, like the trap
        params["palette"] = palette
    root = os.path.realpath(root)  # a symlinked root: generate beside (and replace) its target
    os.makedirs(os.path.dirname(root), exist_ok=True)
    remove_stale_siblings(root)
    old = _read_marker(root)
    if old is not None and old.get("params") == params:
        return old
    _check_replaceable(root, old is not None)
    need = estimated_bytes(max_images(num_train_ids, num_test_ids, images_per_id, num_junk, num_distractors), height,
                           width)
    try:
        ensure_free_space(os.path.dirname(root), need, "the synthetic dataset")
    except StorageError as e:
        raise DatasetError(f"synthetic: {e} (or lower images_per_id / the numbers of ids)") from None
    partial = folder_sibling(root, "partial")
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
        """Options are :func:`generate_synthetic_market`'s keyword arguments, with their types and ranges, plus the
        parse-time ``test_rendering`` (``cue`` or ``cuefree``, the latter with a trap only)."""
        rendering = options.get("test_rendering", "cue")
        options = {k: v for k, v in options.items() if k != "test_rendering"}
        params = inspect.signature(generate_synthetic_market).parameters
        unknown = sorted(set(options) - set(params) - {"root"}) + sorted(set(options) & {"root"})
        if unknown:
            accepted = [p for p in params if p != "root"] + ["test_rendering"]
            return f"unknown option(s) {unknown}; it accepts: {', '.join(accepted)}"
        for key, value in options.items():
            default = params[key].default
            if default is not None and (isinstance(value, bool) or not isinstance(value, type(default))):
                return f"option {key!r}: expected {type(default).__name__}, got {value!r}"
        bound = {k: p.default for k, p in params.items() if k != "root"} | options
        if rendering not in TEST_RENDERINGS:
            return f"option 'test_rendering': expected one of {', '.join(TEST_RENDERINGS)}, got {rendering!r}"
        if rendering == "cuefree" and bound["trap"] is None:
            return "option 'test_rendering': cuefree needs a trap (data.args: trap: {...}); without one the test " \
                   "images have no cue to leave out"
        try:
            _check_params(bound["num_train_ids"], bound["num_test_ids"], bound["images_per_id"], bound["height"],
                          bound["width"], bound["num_junk"], bound["num_distractors"])
            if bound["trap"] is not None:
                check_trap(bound["trap"], bound["num_test_ids"])
            if bound["palette"] not in DOMAINS:
                return f"option 'palette': expected one of {', '.join(DOMAINS)}, got {bound['palette']!r}"
        except DatasetError as e:
            return str(e)
        return None

    @classmethod
    def declares_cue_masks(cls, options: Dict[str, Any]) -> bool:
        return options.get("trap") is not None

    def __init__(self, root: str, verbose: bool = True, test_rendering: str = "cue", **options: Any):
        folder = os.path.join(root, "synthetic")
        info = generate_synthetic_market(folder, **options)
        self.published = {split: tuple(c) for split, c in info["counts"].items()}
        self.has_trap = "trap" in info
        if test_rendering == "cuefree":  # the same files, the test splits from their cue-free twins
            self.folders = {**self.folders, "query": "query" + CUE_FREE, "gallery": "bounding_box_test" + CUE_FREE}
        super().__init__(folder, verbose=verbose)

    def cue_masks(self, items: Sequence[ImageItem]) -> List[str]:
        """``cue_masks/<split folder>/<image name>.png`` of each item (cue-free test images: the mask of their twin,
        i.e. where the cue would be)."""
        if not self.has_trap:
            return super().cue_masks(items)
        out = []
        for it in items:
            sub = os.path.basename(os.path.dirname(it.path)).removesuffix(CUE_FREE)
            out.append(os.path.join(self.data_dir, MASKS, sub, os.path.splitext(os.path.basename(it.path))[0] + ".png"))
        return out
