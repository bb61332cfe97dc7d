"""Features of any images from a trained model, exactly as the evaluator computes them: :class:`FeatureExtractor`
(``from esreid import FeatureExtractor``) and ``esreid extract --images DIR|LIST``.

An input is an image file path, a Pillow image or a numpy array ``(H, W, 3)`` uint8 RGB (:data:`ImageInput`); a
folder stands for its images (:func:`image_paths`). Each becomes the uint8 ``(3, H, W)`` a test loader yields, by the
same code: files through :func:`~esreid.data.transforms.decode_resize`, in-memory images through its bilinear resize
(:func:`~esreid.data.transforms.resize_rgb`). Batches then go through the evaluator's own
:func:`~esreid.engine.evaluator.extract_features`: normalisation on the device (``TestTransform``), the model's
``retrieval_features`` (flip-sum per branch when the retrieval rule flips, per-branch L2 when it normalises,
concatenation), ``solver.amp``, ``solver.channels_last`` and ``solver.compile`` as in evaluation. So the features
equal ``esreid eval`` / ``esreid extract``'s for the same files, and the ONNX graph of ``esreid export`` fed
:meth:`FeatureExtractor.preprocess` gives them too.

Files written by ``esreid extract`` (:func:`save_features`): ``feats`` (N, D) float32 and ``paths`` (N,) str, plus
``ids`` (pids) and ``camids`` (N,) int64 when known (a dataset split, or ``--names`` parsing the file names): the
layout :func:`esreid.evaluation.search.read_features` reads.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from esreid.data.datasets._common import PID_CAM, is_image
from esreid.errors import DatasetError, EsreidError
from esreid.files import atomic_writer, check_writable
from esreid.registry import Registry

ImageInput = Union[str, "os.PathLike[str]", "PIL.Image.Image", np.ndarray]  # noqa: F821


class ImageInputError(EsreidError, ValueError):
    """An input image that cannot be used (missing, unreadable, wrong type or shape); the message names it."""


# --------------------------------------------------------------------------------------------------------------
# Image lists
# --------------------------------------------------------------------------------------------------------------
def list_image_files(folder: str) -> List[str]:
    """Absolute paths of the images (``.jpg``, ``.jpeg``, ``.png``) in ``folder`` and its sub-folders (hidden ones,
    such as ``.esreid_cache``, skipped), sorted by their path relative to ``folder``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [os.path.relpath(os.path.join(dirpath, n), folder) for n in filenames if is_image(n)]
    return [os.path.abspath(os.path.join(folder, rel)) for rel in sorted(found)]


def read_image_list(path: str) -> List[str]:
    """The images a text file lists, one path per line (relative to the file's folder, or absolute); blank lines and
    lines starting with ``#`` are skipped. Raises :class:`ImageInputError` naming the first listed file missing."""
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise ImageInputError(f"{path}: not a text list of image paths (give a folder, or a file with one image "
                              "path per line)") from None
    listed = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip() and not line.strip().startswith("#")]
    paths = [os.path.abspath(os.path.join(base, line)) for _, line in listed]
    missing = [(n, line) for (n, line), full in zip(listed, paths) if not os.path.isfile(full)]
    if missing:
        lineno, line = missing[0]
        raise ImageInputError(f"{path} line {lineno}: image not found: {line} ({len(missing)} listed files missing; "
                              "paths are relative to the list's folder)")
    return paths


def image_paths(source: str) -> List[str]:
    """The images ``source`` names: a folder (its images, recursively, :func:`list_image_files`), a text file listing
    paths (:func:`read_image_list`) or one image file."""
    if os.path.isdir(source):
        paths = list_image_files(source)
        if not paths:
            raise ImageInputError(f"{source}: no images (.jpg, .jpeg, .png) in this folder or below")
        return paths
    if not os.path.isfile(source):
        raise ImageInputError(f"{source}: no such folder or file (expected a folder of images or a text file listing "
                              "image paths)")
    if is_image(source):
        return [os.path.abspath(source)]
    paths = read_image_list(source)
    if not paths:
        raise ImageInputError(f"{source}: lists no image paths")
    return paths


NAME_LAYOUTS = Registry("file-name layout")  # name -> parse(path) -> (pid, camid) or None


@NAME_LAYOUTS.register("market", pattern="<pid>_c<camera>..., e.g. 0002_c1s1_000451_03.jpg")
def _market_names(path: str) -> Optional[Tuple[int, int]]:
    """``<pid>_c<camera>...`` file names (Market-1501, DukeMTMC-reID, VeRi-776); camera 1-based in the name, 0-based
    in the result, as the dataset loaders read them."""
    m = PID_CAM.match(os.path.basename(path))
    return (int(m.group(1)), int(m.group(2)) - 1) if m else None


def parse_names(paths: Sequence[str], layout: str) -> Tuple[np.ndarray, np.ndarray]:
    """pids and camids ``(N,)`` int64 from the file names by ``layout`` (:data:`NAME_LAYOUTS`); raises
    :class:`DatasetError` naming the first file that does not follow it."""
    if layout not in NAME_LAYOUTS:
        raise ImageInputError(f"--names {layout}: unknown file-name layout; expected one of "
                              f"{', '.join(NAME_LAYOUTS.names())}")
    parse = NAME_LAYOUTS.get(layout)
    parsed = [parse(p) for p in paths]
    bad = [p for p, x in zip(paths, parsed) if x is None]
    if bad:
        raise DatasetError(f"{bad[0]}: the file name does not follow the {layout} layout "
                           f"({NAME_LAYOUTS.meta(layout)['pattern']}); {len(bad)} of {len(paths)} files do not; drop "
                           "--names to extract without pids")
    pids, camids = zip(*parsed)
    return np.asarray(pids, np.int64), np.asarray(camids, np.int64)


# --------------------------------------------------------------------------------------------------------------
# Inputs -> uint8 images
# --------------------------------------------------------------------------------------------------------------
def _describe(x: Any, i: int) -> str:
    return os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"input {i} ({type(x).__name__})"


def check_inputs(inputs: Sequence[Any]) -> None:
    """Reject, before any work, inputs that are not a file path, a Pillow image or a uint8 ``(H, W, 3)`` array, and
    paths that are not files; raises :class:`ImageInputError` naming the first."""
    from PIL import Image

    for i, x in enumerate(inputs):
        if isinstance(x, (str, os.PathLike)):
            if not os.path.isfile(x):
                what = "is a folder (pass a folder alone, not inside a list)" if os.path.isdir(x) else "not found"
                raise ImageInputError(f"image {os.fspath(x)} {what}")
        elif isinstance(x, np.ndarray):
            if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3 or 0 in x.shape:
                raise ImageInputError(f"input {i}: expected an RGB image array of shape (H, W, 3) and dtype uint8, got "
                                      f"{x.dtype} {x.shape}")
        elif not isinstance(x, Image.Image):
            raise ImageInputError(f"input {i}: expected an image file path, a PIL image or a uint8 (H, W, 3) numpy "
                                  f"array, got {type(x).__name__}")


def load_image(x: ImageInput, height: int, width: int) -> torch.Tensor:
    """One checked input (:func:`check_inputs`) as the uint8 ``(3, height, width)`` RGB a test loader yields."""
    from PIL import Image

    from esreid.data.transforms import decode_resize, resize_rgb, to_rgb

    if isinstance(x, (str, os.PathLike)):
        return decode_resize(os.fspath(x), height, width)
    if isinstance(x, np.ndarray):
        return resize_rgb(Image.fromarray(x, "RGB"), height, width)
    try:
        return resize_rgb(to_rgb(x), height, width)
    except (OSError, ValueError) as e:  # a lazily opened file that turns out truncated or corrupt
        raise ImageInputError(f"PIL image {getattr(x, 'filename', '') or ''}: cannot be read ({e})") from None


class ImageInputs(Dataset):
    """Checked inputs as loader items ``{images: uint8 (3, H, W), pids: -1, camids: -1, index, error}``. A
    failure to read one is returned as its ``error`` message (a zero image in its place) rather than raised, so that
    it reaches the caller as one line from any loader worker (:func:`raise_errors`)."""

    def __init__(self, inputs: Sequence[ImageInput], height: int, width: int):
        self.inputs, self.height, self.width = list(inputs), height, width

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        item = {"pids": -1, "camids": -1, "index": i, "error": ""}
        try:
            item["images"] = load_image(self.inputs[i], self.height, self.width)
        except EsreidError as e:
            item["images"] = torch.zeros(3, self.height, self.width, dtype=torch.uint8)
            item["error"] = str(e) or _describe(self.inputs[i], i)
        return item


def raise_errors(loader: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    """The batches of ``loader``, raising :class:`ImageInputError` at the first batch holding an unreadable image."""
    for batch in loader:
        bad = [e for e in batch["error"] if e]
        if bad:
            more = f" ({len(bad) - 1} more unreadable images in the same batch)" if len(bad) > 1 else ""
            raise ImageInputError(bad[0] + more)
        yield batch


# --------------------------------------------------------------------------------------------------------------
# The extractor
# --------------------------------------------------------------------------------------------------------------
class FeatureExtractor:
    """Retrieval features of any images from a trained model, computed exactly as the evaluator computes them.

    Args:
        config: a run folder (``output_dir`` of ``esreid train``: ``config.yaml`` with ``model_best.pth`` if present,
            else ``last.pth``), a YAML config path, or a loaded :class:`~esreid.config.Config`.
        weights: the checkpoint (required with a config file; overrides the run folder's choice): esreid's, or another
            toolkit's (``fastreid:W.pth``, ..., or recognised by its keys: :mod:`esreid.models.importers`).
        overrides: ``key=value`` config overrides (as on the command line), e.g. ``["test.flip=false"]``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; default: the config's ``device``.
        batch_size: images per forward pass (default ``data.test_batch_size``).
        workers: loader processes decoding image files (default ``data.workers``; in-memory images and inputs that
            fit in one batch are decoded in this process).

    ``extractor(images)`` -> float32 tensor ``(N, D)`` on the CPU, one row per input in order (``images``: one input,
    a sequence of inputs, or a folder). ``extractor.retrieval`` says how to compare rows (``metric``: cosine or
    squared Euclidean; the evaluator ranks with it)::

        from esreid import FeatureExtractor
        extractor = FeatureExtractor("outputs/my_people")            # the run folder
        feats = extractor(["a.jpg", "b.jpg"])                         # (2, D)
        unit = torch.nn.functional.normalize(feats)                   # metric 'cosine': compare unit rows
        similarity = unit @ unit.T
    """

    def __init__(self, config: Any, weights: Optional[str] = None, *, overrides: Sequence[str] = (),
                 device: Optional[str] = None, batch_size: Optional[int] = None, workers: Optional[int] = None):
        from esreid.data.transforms import TestTransform
        from esreid.engine.session import open_trained

        session = open_trained(config, weights, overrides, device=device or None)
        self.cfg, self.weights, self.device, self.model = session.cfg, session.weights, session.device, session.model
        data = self.cfg.data
        self.data = dataclasses.replace(data, cache=False, test_batch_size=batch_size or data.test_batch_size,
                                        workers=data.workers if workers is None else workers)
        self.transform = TestTransform(data)

    @property
    def retrieval(self):
        """The model's :class:`~esreid.models.base.RetrievalRule` (flip, normalize, metric)."""
        return self.model.retrieval

    @property
    def size(self) -> Tuple[int, int]:
        """``(height, width)`` every image is resized to (``data.height``, ``data.width``)."""
        return self.cfg.data.height, self.cfg.data.width

    def inputs(self, images: Union[ImageInput, Sequence[ImageInput]]) -> List[ImageInput]:
        """``images`` as a checked list of inputs: a folder becomes its images (:func:`image_paths`), one input a
        list of one."""
        from PIL import Image

        if isinstance(images, (str, os.PathLike)):
            items = image_paths(os.fspath(images)) if os.path.isdir(images) else [images]
        elif isinstance(images, (np.ndarray, Image.Image)):
            items = [images]
        else:
            items = list(images)
        if not items:
            raise ImageInputError("no images given")
        check_inputs(items)
        return items

    def _loader(self, items: List[ImageInput]):
        from esreid.data.loader import ordered_loader

        files_only = all(isinstance(x, (str, os.PathLike)) for x in items)
        workers = self.data.workers if files_only and len(items) > self.data.test_batch_size else 0
        data = dataclasses.replace(self.data, workers=workers)
        return raise_errors(ordered_loader(data, ImageInputs(items, *self.size)))

    def __call__(self, images: Union[ImageInput, Sequence[ImageInput]]) -> torch.Tensor:
        """Features ``(N, D)`` float32 on the CPU of ``images`` (one input, a sequence, or a folder)."""
        from esreid.engine.evaluator import extract_features

        loader = self._loader(self.inputs(images))
        feats, _, _ = extract_features(self.model, loader, self.device, self.transform, self.cfg.solver.amp,
                                       channels_last=self.cfg.solver.channels_last)
        return feats

    def preprocess(self, images: Union[ImageInput, Sequence[ImageInput]]) -> torch.Tensor:
        """The normalised float32 batch ``(N, 3, H, W)`` (CPU) the model sees for ``images``: the input of the ONNX
        graph ``esreid export`` writes."""
        batches = [self.transform(batch["images"]) for batch in self._loader(self.inputs(images))]
        return torch.cat(batches)


# --------------------------------------------------------------------------------------------------------------
# esreid extract
# --------------------------------------------------------------------------------------------------------------
def check_output(out: str) -> None:
    """``out`` is a ``.npz`` name in a writable folder (checked before any work)."""
    if not out.endswith(".npz"):
        raise ImageInputError(f"--out {out}: expected a file name ending in .npz (esreid search reads .npz files)")
    check_writable(os.path.dirname(os.path.abspath(out)), "the folder of --out")


def save_features(out: str, feats: np.ndarray, paths: Sequence[str], pids: Optional[np.ndarray] = None,
                  camids: Optional[np.ndarray] = None) -> None:
    """Write ``feats`` (N, D) float32, ``paths`` (N,) and, when given, ``ids`` / ``camids`` (N,) int64 to ``out``
    atomically: the ``.npz`` layout ``esreid search`` reads."""
    arrays = {"feats": np.asarray(feats, np.float32), "paths": np.asarray(paths, dtype=str)}
    if pids is not None:
        arrays.update(ids=np.asarray(pids, np.int64), camids=np.asarray(camids, np.int64))
    with atomic_writer(out) as f:
        np.savez(f, **arrays)


def extract_images(config: str, weights: str, images: str, out: str, names: Optional[str] = None,
                   overrides: Sequence[str] = ()) -> np.ndarray:
    """``esreid extract --images DIR|LIST``: features of any images (a folder, recursively, or a text file listing
    paths), saved with their paths to ``out``; pids and cameras parsed from the file names with ``names`` (a
    layout: :func:`parse_names`). Prints what was written; returns the features (N, D)."""
    check_output(out)
    paths = image_paths(images)
    pids, camids = parse_names(paths, names) if names else (None, None)
    extractor = FeatureExtractor(config, weights, overrides=overrides)
    feats = extractor(paths).numpy()
    save_features(out, feats, paths, pids, camids)
    known = f", pids and cameras from the {names} names" if names else ""
    print(f"wrote {out}: features {feats.shape} of {len(paths)} images under {images}{known}")
    return feats
