"""The dataset interface every loader implements, and the dataset registry.

A re-ID dataset is three lists of :class:`ImageItem` (train / query / gallery). Train pids are relabelled
to ``0..N-1`` (sorted by raw pid); query and gallery keep the raw pids, as in torchreid and fast-reid.
``protocol`` names the evaluation protocol in ``esreid.evaluation.protocols.PROTOCOLS``.
"""

from __future__ import annotations

import inspect
import os
import stat
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

from esreid.errors import DatasetError  # noqa: F401  (re-exported for the loaders)
from esreid.registry import Registry

DATASETS = Registry("dataset", locations=("esreid.data.datasets",))  # the loaders, imported on first lookup


class ImageItem(NamedTuple):
    path: str  # absolute path of the image file
    pid: int  # identity (relabelled 0..N-1 in train; raw in query/gallery; 0 = Market distractor)
    camid: int  # 0-based camera id


class ReIDDataset:
    """Base class. Subclasses fill ``train``, ``query`` and ``gallery`` in ``__init__``.

    Attributes:
        name: registry name.
        protocol: evaluation protocol name ("market" unless the dataset says otherwise).
        published: the canonical counts ``{split: (ids, images)}`` used by :meth:`check_counts`.
    """

    name: str = ""
    protocol: str = "market"
    published: Dict[str, tuple] = {}

    def __init__(self, train: Sequence[ImageItem], query: Sequence[ImageItem], gallery: Sequence[ImageItem]):
        self.train: List[ImageItem] = list(train)
        self.query: List[ImageItem] = list(query)
        self.gallery: List[ImageItem] = list(gallery)

    # --- summary -------------------------------------------------------------------------------------------
    @staticmethod
    def split_stats(items: Sequence[ImageItem]) -> tuple:
        """(number of ids, number of images, number of cameras) of a split."""
        return len({it.pid for it in items}), len(items), len({it.camid for it in items})

    @property
    def num_train_pids(self) -> int:
        return self.split_stats(self.train)[0]

    def summary(self) -> str:
        """The canonical table torchreid prints: ids / images / cameras per split (and the number of non-image files
        skipped, when any)."""
        rows = [("train", self.train), ("query", self.query), ("gallery", self.gallery)]
        lines = [
            f"=> {self.name or type(self).__name__} loaded",
            "  ----------------------------------------",
            "  subset   | # ids | # images | # cameras",
            "  ----------------------------------------",
        ]
        for split, items in rows:
            ids, imgs, cams = self.split_stats(items)
            lines.append(f"  {split:<8} | {ids:5d} | {imgs:8d} | {cams:9d}")
        lines.append("  ----------------------------------------")
        if getattr(self, "ignored_files", 0):
            lines.append(f"  (skipped {self.ignored_files} non-image files, e.g. Thumbs.db)")
        return "\n".join(lines)

    # --- options (checked when a config is loaded, before any file is read) ------------------------------------
    @classmethod
    def check_options(cls, options: Dict[str, Any]) -> Optional[str]:
        """What is wrong with ``data.args`` for this dataset (None when nothing): unknown option names by default;
        datasets with numeric options add range checks."""
        params = inspect.signature(cls).parameters
        try:
            inspect.signature(cls).bind("root", **options)
        except TypeError as e:
            accepted = [p for p in params if p not in ("root", "kwargs", "options", "verbose")]
            return f"bad option ({e}); it accepts: {', '.join(accepted) or 'none'}"
        for key, value in options.items():
            default = params[key].default if key in params else inspect.Parameter.empty
            if isinstance(default, bool) and not isinstance(value, bool):
                return f"option {key!r}: expected true/false, got {value!r}"
            if type(default) is int and (isinstance(value, bool) or not isinstance(value, int)):
                return f"option {key!r}: expected an integer, got {value!r}"
        return None

    @classmethod
    def protocol_name(cls, options: Dict[str, Any]) -> str:
        """The evaluation protocol this dataset uses with ``options`` (``data.args``)."""
        return cls.protocol

    @classmethod
    def check_protocol_options(cls, options: Dict[str, Any], protocol_args: Dict[str, Any]) -> Optional[str]:
        """What is wrong with ``test.protocol_args`` for the protocol this dataset uses with ``options`` (or None)."""
        from esreid.evaluation.protocols import PROTOCOLS

        name = cls.protocol_name(options)
        return PROTOCOLS.meta(name)["options"].problem(protocol_args, name)

    @classmethod
    def declares_cue_masks(cls, options: Dict[str, Any]) -> bool:
        """Whether the dataset built with ``options`` declares exact per-image masks of a known salient cue
        (:meth:`cue_masks`; the synthetic trap does): an oracle eraser and the cue-coverage diagnostic need them."""
        return False

    def cue_masks(self, items: Sequence[ImageItem]) -> List[str]:
        """The mask file of each of ``items`` (a PNG of the image's size, non-zero = cue), for a dataset that
        :meth:`declares_cue_masks`; others raise (a config check refuses what needs masks before this is asked)."""
        raise NotImplementedError(f"{self.name or type(self).__name__} declares no cue masks")

    def check_counts(self, expected: Optional[Dict[str, tuple]] = None) -> List[str]:
        """Compare (ids, images) per split with the published counts; returns the mismatches (empty = ok)."""
        expected = self.published if expected is None else expected
        problems = []
        for split, (ids, imgs) in expected.items():
            got_ids, got_imgs, _ = self.split_stats(getattr(self, split))
            if (got_ids, got_imgs) != (ids, imgs):
                problems.append(f"{split}: expected {ids} ids / {imgs} images, found {got_ids} / {got_imgs}")
        return problems


def relabel(items: Sequence[ImageItem]) -> List[ImageItem]:
    """Map raw train pids to 0..N-1 in sorted order (deterministic, unlike relabelling over a set)."""
    mapping = {pid: i for i, pid in enumerate(sorted({it.pid for it in items}))}
    return [it._replace(pid=mapping[it.pid]) for it in items]


def build_dataset(name: str, root: str, verbose: bool = True, **options: Any) -> ReIDDataset:
    """Instantiate a registered dataset: ``DATASETS.get(name)(root, verbose=verbose, **options)``; ``options`` are
    ``data.args``, checked first (:meth:`ReIDDataset.check_options`)."""
    cls = DATASETS.get(name)
    problem = cls.check_options(options)
    if problem:
        raise DatasetError(f"dataset {name!r}: data.args: {problem}")
    return cls(root, verbose=verbose, **options)


def check_regular_file(path: str) -> None:
    """A :class:`DatasetError` naming ``path`` unless it is a regular file (after symlinks): opening a FIFO named
    ``.jpg`` waits forever for a writer, a device never ends."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read image file: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DatasetError(f"{path}: not a regular file (a {_file_kind(st.st_mode)}): an image must be a plain file; "
                           "replace or remove it")


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "FIFO / named pipe"), (stat.S_ISDIR, "folder"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")]
    return next((name for test, name in kinds if test(mode)), "special file")
