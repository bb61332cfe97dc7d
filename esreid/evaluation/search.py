"""Large-gallery search with faiss (optional extra ``esreid[faiss]``): index gallery features, return top-k per query.

``GalleryIndex(kind, metric)`` with ``kind`` one of :data:`INDEX_KINDS`:

* ``flat``: exact search (brute force inside faiss);
* ``ivf``: inverted lists over k-means cells (``nlist`` cells, default sqrt(N); ``nprobe`` visited per query), trained
  on (a subsample of, 64 per cell) the first ``add``; approximate;
* ``hnsw``: hierarchical navigable small-world graph (``hnsw_m`` links, ``ef_search``); approximate, no training.

Distances follow :mod:`esreid.evaluation.distance`: cosine = 1 - cos (features L2-normalised, inner-product index),
euclidean = squared L2. Ranking: nearest first, ties by gallery position (the evaluator's tie rule), exactly so for
``flat`` (also across the k-th place); ``k`` is capped at the gallery size. :func:`evaluate_topk` evaluates with a
top-k search when the gallery is too large for distance matrices.

Files (:func:`search_files`, what ``esreid search`` runs: :mod:`esreid.commands.search`): features ``.npz`` as
``esreid extract`` writes them: ``feats`` (N, D) float, and optionally ``ids`` (N,) int (pids), ``camids`` (N,)
int, ``paths`` (N,) str. :func:`search_files` returns :class:`SearchResults`, a sequence of one dict per query::

    {"query": 0, "path": "q/0001_c1.jpg", "pid": 1, "camid": 0,          # None where the query file lacks the column
     "matches": [{"rank": 1, "row": 18, "path": "g/0001_c2.jpg", "pid": 1, "camid": 1, "distance": 0.099}, ...]}

``row`` is the gallery item's position in the gallery file. ``--output`` by extension (:data:`OUTPUT_FORMATS`):

* ``.json``: ``{"index", "metric", "k", "queries": [<the dicts above>]}``;
* ``.csv``: one line per match, columns :data:`CSV_COLUMNS` (empty where unknown);
* ``.npz``, with the key names of ``esreid extract``: ``dist`` (M, k) float32 and ``rows`` (M, k) int64; ``paths``
  (M, k) str, ``ids`` (pids) / ``camids`` (M, k) int64 when the gallery file has them; ``query_paths`` /
  ``query_ids`` / ``query_camids`` (M,) when the query file has them. Where an approximate index found fewer than k
  matches: row -1, dist inf, id / camid -1, path "".

``--html FILE`` / ``--grid DIR`` show each query and its top-k images (:mod:`esreid.viz.matches`, which sits above
this module: nothing here draws).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import zipfile
from dataclasses import dataclass
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from esreid.errors import EsreidError
from esreid.evaluation.distance import ArrayLike
from esreid.evaluation.metrics import AP_MODES, as_ids, same_pid_index
from esreid.files import atomic_writer, format_size
from esreid.registry import Registry

INDEX_KINDS = Registry("index kind")
COLUMNS = {"paths": "path", "ids": "pid", "camids": "camid"}  # .npz key (esreid extract) -> result field
CSV_COLUMNS = ("query", "query_path", "query_pid", "query_camid", "rank", "row", "path", "pid", "camid", "distance")


class SearchError(EsreidError, ValueError):
    """Search inputs that cannot be used (a file, features, a setting); the message names which and why."""


def faiss_module():
    """Import faiss lazily, with an error that names the extra to install."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError("faiss is not installed; install the optional extra: pip install 'esreid[faiss]' "
                          "(or faiss-cpu / faiss-gpu)") from e
    return faiss


@INDEX_KINDS.register("flat")
def _flat(faiss, dim: int, faiss_metric: int, num: int, **_: Any):
    """Exact search: every gallery item is compared with the query."""
    return faiss.IndexFlat(dim, faiss_metric)


@INDEX_KINDS.register("ivf")
def _ivf(faiss, dim: int, faiss_metric: int, num: int, nlist: Optional[int] = None, nprobe: int = 16,
         train_iters: int = 10, **_: Any):
    """Approximate: inverted lists over k-means cells (nlist cells, nprobe visited per query)."""
    nlist = nlist or max(1, min(int(math.sqrt(num)), num // 39))  # faiss wants >= 39 training points per cell
    index = faiss.IndexIVFFlat(faiss.IndexFlat(dim, faiss_metric), dim, nlist, faiss_metric)
    index.nprobe = nprobe
    index.cp.niter, index.cp.max_points_per_centroid = train_iters, 64  # k-means on a subsample: seconds at 1M
    return index


@INDEX_KINDS.register("hnsw")
def _hnsw(faiss, dim: int, faiss_metric: int, num: int, hnsw_m: int = 32, ef_search: int = 64,
          ef_construction: int = 40, **_: Any):
    """Approximate: hierarchical navigable small-world graph (hnsw_m links, ef_search), no training."""
    index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss_metric)
    index.hnsw.efSearch, index.hnsw.efConstruction = ef_search, ef_construction
    return index


def float32_features(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` (N, D) as a C-contiguous float32 array, the layout faiss needs.

    Accepts any floating dtype (float16/32/64, torch bfloat16) and any strides (slices, ``[::-1]``, transposes,
    other byte orders: they are copied), numpy arrays, torch tensors (any device) and nested sequences. Raises
    :class:`SearchError` for another rank, a non-floating dtype, no rows, or rows holding NaN / inf.
    """
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise SearchError(f"{name}: expected floating-point features, got dtype {x.dtype}")
        a = x.detach().to("cpu", torch.float32).numpy()
    else:
        a = np.asarray(x)
        if not np.issubdtype(a.dtype, np.floating):
            raise SearchError(f"{name}: expected floating-point features, got dtype {a.dtype}")
    if a.ndim != 2 or not len(a):
        raise SearchError(f"{name}: expected a 2-D (N, D) feature array with N >= 1, got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
    if len(bad):
        raise SearchError(f"{name}: {len(bad)} rows hold NaN or inf (first: row {bad[0]})")
    return a


class GalleryIndex:
    """A faiss index over gallery features, returning the caller's ids (or the gallery positions: "rows").

    Args:
        kind: "flat" | "ivf" | "hnsw".
        metric: "cosine" | "euclidean" (squared).
        params: kind-specific settings (``nlist``, ``nprobe``, ``hnsw_m``, ``ef_search``, ``ef_construction``).

    ``info`` holds per-item columns given to :meth:`add` (e.g. ``paths``), aligned with the rows and saved with the
    index.
    """

    def __init__(self, kind: str = "flat", metric: str = "cosine", **params: Any):
        if kind not in INDEX_KINDS:
            raise SearchError(f"index kind: expected one of {', '.join(INDEX_KINDS.names())}, got {kind!r}")
        if metric not in ("cosine", "euclidean"):
            raise SearchError(f"metric: expected 'cosine' or 'euclidean', got {metric!r}")
        self.kind, self.metric, self.params = kind, metric, params
        self.index = None
        self.ids = np.zeros(0, np.int64)
        self.info: Dict[str, np.ndarray] = {}

    def _prepare(self, x: ArrayLike, name: str) -> np.ndarray:
        a = float32_features(x, name)
        if self.metric == "cosine":  # a new array: the caller's features are never modified
            a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        return a

    def add(self, feats: ArrayLike, ids: Optional[ArrayLike] = None, **info: ArrayLike) -> GalleryIndex:
        """Add ``feats`` ``(N, D)`` (any float dtype and strides, see :func:`float32_features`) with integer ``ids``
        ``(N,)`` (default: running positions 0, 1, ...) and per-item ``info`` columns ``(N,)`` (e.g. ``paths=``;
        the same names at every call)."""
        x = self._prepare(feats, "gallery features")
        ids = np.arange(len(self.ids), len(self.ids) + len(x)) if ids is None else as_ids(ids, "ids", len(x))
        cols = {name: np.asarray(col) for name, col in info.items()}
        for name, col in cols.items():
            if col.shape != (len(x),):
                raise SearchError(f"gallery {name}: expected shape ({len(x)},) like the features, got {col.shape}")
        if self.index is not None and set(cols) != set(self.info):
            raise SearchError(f"gallery info columns {sorted(cols)} differ from the earlier ones {sorted(self.info)}")
        faiss = faiss_module()
        if self.index is None:
            faiss_metric = faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2
            self.index = INDEX_KINDS.get(self.kind)(faiss, x.shape[1], faiss_metric, len(x), **self.params)
            if not self.index.is_trained:
                self.index.train(x)
        elif x.shape[1] != self.index.d:
            raise SearchError(f"gallery features: dimension {x.shape[1]} does not match the index ({self.index.d})")
        self.index.add(x)
        self.info = {name: np.concatenate([self.info[name], col]) if name in self.info else col
                     for name, col in cols.items()}
        self.ids = np.concatenate([self.ids, ids])
        return self

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return 0 if self.index is None else self.index.d

    def search_rows(self, q: ArrayLike, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(dist, rows)``, float32 and int64, both ``(Nq, min(k, len(self)))``: gallery positions, nearest first,
        ties by position; row -1 (dist inf) where an approximate index found fewer items.

        A tie at the k-th place keeps the lowest positions with ``flat``: faiss's k-selection replaces an item only by
        a strictly nearer one, scanning the gallery in order (tested); within the k items we order ties by position.
        """
        if self.index is None:
            raise ValueError("the index is empty: call add() first")
        if k < 1:
            raise ValueError(f"k: expected a positive number of matches, got {k}")
        x = self._prepare(q, "query features")
        if x.shape[1] != self.dim:
            raise SearchError(f"query features: dimension {x.shape[1]} does not match the index ({self.dim})")
        score, rows = self.index.search(x, min(k, len(self)))
        dist = np.where(rows >= 0, 1.0 - score if self.metric == "cosine" else score, np.inf).astype(np.float32)
        order = np.lexsort((rows, dist), axis=1)  # by distance, ties by position; not found (inf) last
        return np.take_along_axis(dist, order, 1), np.take_along_axis(rows, order, 1).astype(np.int64)

    def search(self, q: ArrayLike, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(dist, ids)``: :meth:`search_rows` with the ids given to :meth:`add` (-1 where nothing was found)."""
        dist, rows = self.search_rows(q, k)
        return dist, np.where(rows >= 0, self.ids[rows.clip(min=0)], -1)

    def save(self, path: str) -> None:
        """One ``.npz`` file (written atomically): the serialised faiss index, the ids, the settings and the info
        columns (as ``info_<name>``)."""
        if self.index is None:
            raise ValueError("the index is empty: nothing to save")
        arrays = dict(index=faiss_module().serialize_index(self.index), ids=self.ids, kind=np.array(self.kind),
                      metric=np.array(self.metric), **{f"info_{name}": col for name, col in self.info.items()})
        write_atomically(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str) -> GalleryIndex:
        """The index :meth:`save` wrote to ``path``, checked (:meth:`check_saved`) before it is used."""
        faiss = faiss_module()
        with open_npz(path) as f:
            try:
                obj = cls(kind=str(f["kind"]), metric=str(f["metric"]))
                obj.ids = as_ids(f["ids"], "ids")
                obj.info = {key[len("info_"):]: f[key] for key in f.files if key.startswith("info_")}
                raw = f["index"]
            except (OSError, KeyError, ValueError, AttributeError, zipfile.BadZipFile) as e:
                raise SearchError(f"{path}: not a saved gallery index (expected keys index, ids, kind, metric, as "
                                  f"--save-index writes them): {e}") from None
        try:
            obj.index = faiss.deserialize_index(np.ascontiguousarray(raw, dtype=np.uint8))
        except (RuntimeError, ValueError, TypeError) as e:  # faiss reports a damaged index as a RuntimeError
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SearchError(f"{path}: the faiss index in it is damaged ({first}); build it again with "
                              "esreid search --gallery FEATS.npz --save-index") from None
        obj.check_saved(path)
        return obj

    def check_saved(self, path: str) -> None:
        """A loaded index agrees with itself: as many faiss vectors as ids and info rows, the metric it was built
        with, a positive dimension; else faiss would cap k (or index past the ids) without a word."""
        want, again = self.index.ntotal, "build it again with esreid search --gallery FEATS.npz --save-index"
        counts = [f"{len(col)} rows of info_{name}" for name, col in self.info.items() if len(col) != want]
        if len(self.ids) != want:
            counts.insert(0, f"{len(self.ids)} ids")
        if counts:
            raise SearchError(f"{path}: inconsistent saved index: its faiss index holds {want} vectors but the file "
                              f"has {', '.join(counts)}; {again}")
        faiss = faiss_module()
        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2
        if self.index.metric_type != metric or self.index.d < 1:
            raise SearchError(f"{path}: inconsistent saved index: metric {self.metric!r} but its faiss index "
                              f"(dimension {self.index.d}) has metric type {self.index.metric_type}, not {metric}; "
                              f"{again}")


def available_memory() -> int:
    """Bytes of memory this machine can still give (``MemAvailable`` of ``/proc/meminfo``; the physical memory where
    there is no ``/proc``)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def open_npz(path: str) -> Any:
    """``np.load(path, allow_pickle=False)`` of an ``.npz`` after checking, from the zip directory and each array's
    ``.npy`` header (nothing is decompressed beyond the headers), that it can be read safely:

    * no object arrays (they would need pickle: code from the file);
    * each array's shape x itemsize fits the bytes its member holds (a forged header would make numpy allocate what
      it claims before reading);
    * the members' uncompressed sizes together fit the memory available (a zip bomb: a few MB that inflate to more
      than the machine has; Python's zip reader never inflates a member past its recorded size).

    Raises :class:`SearchError` naming the file, the array and what to do; the caller closes the returned file.
    """
    if not os.path.exists(path):
        raise SearchError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            bare = f.read(6) == b"\x93NUMPY"
        if bare:
            raise SearchError(f"{path}: a bare array; expected an .npz with 'feats' (N, D) (+ ids, camids, paths)")
        raise SearchError(f"{path}: not a readable .npz file (not a zip archive); esreid extract writes them")
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                total += info.file_size
                if info.filename.endswith(".npy"):
                    with zf.open(info) as member:
                        _check_npy_member(path, info, member)
    except SearchError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise SearchError(f"{path}: not a readable .npz file ({e}); esreid extract writes them") from None
    free = available_memory()
    if total > free:
        raise SearchError(f"{path}: its arrays inflate to {format_size(total)}, more than the {format_size(free)} of "
                          "memory available here (a zip bomb, or features too large for this machine): check where "
                          "the file comes from, or search on a machine with more memory")
    return np.load(path, allow_pickle=False)


def _check_npy_member(path: str, info: zipfile.ZipInfo, member: IO) -> None:
    name = info.filename[: -len(".npy")]
    version = np.lib.format.read_magic(member)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(member)
    if dtype.hasobject:
        raise SearchError(f"{path}: array {name!r} holds Python objects (dtype {dtype}), which only pickle can load "
                          "and esreid never unpickles a features file: write it with esreid extract (numbers and "
                          "strings only)")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > info.file_size:
        raise SearchError(f"{path}: array {name!r} claims shape {tuple(shape)} ({format_size(claimed)}) but its member "
                          f"holds {format_size(info.file_size)}: the file is damaged or forged; write it again with "
                          "esreid extract")


def write_atomically(path: str, write: Callable[[IO], None], mode: str = "wb") -> None:
    """``write(file)`` through :func:`esreid.files.atomic_writer` (``path`` is never left half-written, and gets the
    permissions of any new file); text modes (``"w"``) get a UTF-8 text file writing newlines as given."""
    with atomic_writer(path) as f:
        if "b" in mode:
            write(f)
            return
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        write(text)
        text.flush()
        text.detach()  # the binary file stays open for atomic_writer to sync and move


def evaluate_topk(q_pids, g_pids, q_camids, g_camids, qf: ArrayLike, index: GalleryIndex, k: int = 50,
                  ap_mode: str = "anchor", ranks: Sequence[int] = (1, 5, 10, 20)) -> Dict[str, Any]:
    """Market-protocol evaluation from a top-k search (galleries too large for distance matrices).

    ``index`` must hold the gallery in the order of ``g_pids`` (its rows are the gallery positions). Each
    query is searched for ``k`` plus its number of junk items (same pid and camera, known from the labels), so that
    ``k`` kept items remain. What is exact and what is not:

    * CMC up to rank k is exact with a ``flat`` index (exact ties ordered by gallery position, as the exact
      evaluator orders them); approximate with ``ivf`` / ``hnsw`` (whatever they miss);
    * ``mAP@k`` sums the AP terms of the hits within the first k kept items and divides by the query's full number
      of positives R: a lower bound of the full AP, equal to it when all R positives rank within k;
    * mINP needs the rank of the last positive and is not reported.
    """
    q_pids, q_camids = as_ids(q_pids, "q_pids"), as_ids(q_camids, "q_camids", len(q_pids))
    g_pids, g_camids = as_ids(g_pids, "g_pids", len(index)), as_ids(g_camids, "g_camids", len(index))
    if max(ranks) > k:
        raise ValueError(f"ranks {list(ranks)} go beyond k={k}")
    same = same_pid_index(g_pids, q_pids)
    same_cam = (same >= 0) & (g_camids[same.clip(min=0)] == q_camids[:, None])
    num_pos = ((same >= 0) & ~same_cam).sum(1)
    depth = min(k + int(same_cam.sum(1).max(initial=0)), len(index))
    _, idx = index.search_rows(qf, depth)
    found = idx >= 0
    gi = idx.clip(min=0)
    is_same = found & (g_pids[gi] == q_pids[:, None])
    kept = found & ~(is_same & (g_camids[gi] == q_camids[:, None]))
    rank = np.cumsum(kept, 1)  # 1-based rank among kept items
    hit = kept & is_same & (rank <= k)
    i = np.cumsum(hit, 1)
    ap_term = AP_MODES.get(ap_mode)  # the same AP terms as the exact evaluator
    terms = ap_term(torch.from_numpy(i.astype(np.float64)), torch.from_numpy(rank.astype(np.float64))).numpy()
    ok = num_pos > 0
    if not ok.any():
        raise ValueError("no query has a matching gallery item (same pid, other camera): nothing to evaluate")
    ap = np.where(hit, terms, 0.0).sum(1)[ok] / num_pos[ok]
    first = np.where(hit.any(1), np.where(hit, rank, np.iinfo(np.int64).max).min(1), k + 1)[ok]
    out = {f"R{r}": float(np.mean(first <= r)) for r in ranks}
    counts = {"num_valid_q": int(ok.sum()), "num_skipped_q": int((~ok).sum())}
    return {f"mAP@{k}": float(ap.mean()), **out, "k": k, **counts}


def read_features(path: str) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """``feats`` (N, D) float32 and the columns of ``path`` present among ``paths``, ``ids``, ``camids`` (N,), keyed
    by their result field (path, pid, camid)."""
    data = open_npz(path)
    with data:
        if "feats" not in data.files:
            hint = "; a saved index goes to --load-index" if "index" in data.files else ""
            raise SearchError(f"{path}: expected an array 'feats' (N, D) (and optional ids, camids, paths, as esreid "
                              f"extract writes them), found keys {sorted(data.files)}{hint}")
        feats = float32_features(data["feats"], f"{path}: feats")
        cols = {}
        for key in COLUMNS:
            if key in data.files:
                col = data[key]
                kinds = "US" if key == "paths" else "iu"
                if col.shape != (len(feats),) or col.dtype.kind not in kinds:
                    want = "str" if key == "paths" else "integer"
                    raise SearchError(f"{path}: {key!r} should be a {want} array of shape ({len(feats)},) like "
                                      f"feats, got {col.dtype} {col.shape}")
                cols[COLUMNS[key]] = col.astype(str) if key == "paths" else col.astype(np.int64)
    return feats, cols


@dataclass(frozen=True)
class SearchResults(Sequence):
    """The ranked gallery of every query: ``results[i]`` is query i's dict (see the module docstring); the arrays
    serve bulk use (the ``.npz`` output, drawing)."""

    dist: np.ndarray  # (M, k) float32, nearest first; inf where not found
    rows: np.ndarray  # (M, k) int64 gallery positions; -1 where not found
    query: Dict[str, np.ndarray]  # the query file's columns among path, pid, camid: (M,) each
    gallery: Dict[str, np.ndarray]  # the gallery's columns among path, pid, camid: (N,) each
    gallery_size: int
    kind: str = "flat"
    metric: str = "cosine"

    @property
    def k(self) -> int:
        return self.rows.shape[1]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        matches = [{"rank": rank, "row": int(row), **self._fields(self.gallery, row), "distance": float(str(d))}
                   for rank, (row, d) in enumerate(zip(self.rows[i], self.dist[i]), 1) if row >= 0]
        return {"query": i, **self._fields(self.query, i), "matches": matches}

    @staticmethod
    def _fields(columns: Dict[str, np.ndarray], i: int) -> Dict[str, Any]:
        return {field: columns[field][i].item() if field in columns else None for field in COLUMNS.values()}

    def column(self, field: str) -> np.ndarray:
        """The gallery column ``field`` (path, pid, camid) at every match, (M, k); "" or -1 where not found."""
        col = self.gallery[field][self.rows.clip(min=0)]
        return np.where(self.rows >= 0, col, "" if col.dtype.kind == "U" else -1)


def search_files(query: str, k: int = 10, *, gallery: Optional[str] = None, load_index: Optional[str] = None,
                 kind: Optional[str] = None, metric: Optional[str] = None, save_index: Optional[str] = None,
                 **params: Any) -> SearchResults:
    """Rank the gallery for every query of the features file ``query``: the top ``k`` (capped at the gallery size,
    with a note on stderr) by distance, ties by gallery position.

    The gallery comes from exactly one of ``gallery`` (a features ``.npz``, indexed as ``kind`` (default flat) with
    ``metric`` (default cosine) and ``params``) or ``load_index`` (an index written by ``save_index``, which keeps
    the gallery's paths, pids and camids). Files are read and checked before the index is built.
    """
    if (gallery is None) == (load_index is None):
        raise SearchError("search: give exactly one of a gallery features file or a saved index")
    if gallery is not None:
        index = GalleryIndex(kind or "flat", metric or "cosine", **params)
        gallery_feats, gallery_cols = read_features(gallery)
    else:
        index = GalleryIndex.load(load_index)
        for name, want, got in (("index", kind, index.kind), ("metric", metric, index.metric)):
            if want not in (None, got):
                raise SearchError(f"{load_index}: the saved index has {name} {got!r}; --{name} {want} describes a "
                                  "new index (drop it, or build one with --gallery)")
        gallery_feats, gallery_cols = None, {}
    qf, query_cols = read_features(query)
    dim = index.dim if gallery_feats is None else gallery_feats.shape[1]
    if qf.shape[1] != dim:
        raise SearchError(f"{query}: features of dimension {qf.shape[1]}, but the gallery's "
                          f"({gallery or load_index}) have {dim}: extract both with the same model")
    if gallery_feats is not None:
        index.add(gallery_feats, **gallery_cols)
    if save_index:
        index.save(save_index)
    if k > len(index):
        print(f"esreid: note: k={k} is more than the {len(index)} gallery items: returning all {len(index)}",
              file=sys.stderr)
    dist, rows = index.search_rows(qf, k)
    short = int((rows < 0).any(axis=1).sum())
    if short:
        print(f"esreid: note: the approximate {index.kind} index found fewer than {rows.shape[1]} matches for "
              f"{short} of {len(rows)} queries (raise nprobe / ef_search, or use the flat index)", file=sys.stderr)
    return SearchResults(dist, rows, query_cols, index.info, len(index), index.kind, index.metric)


OUTPUT_FORMATS = Registry("search output format")  # file extension -> write(results, file); mode = "w" | "wb"


@OUTPUT_FORMATS.register(".json", mode="w")
def _write_json(results: SearchResults, f: IO) -> None:
    json.dump({"index": results.kind, "metric": results.metric, "k": results.k, "queries": list(results)}, f,
              indent=1)


@OUTPUT_FORMATS.register(".csv", mode="w")
def _write_csv(results: SearchResults, f: IO) -> None:
    out = csv.writer(f)
    out.writerow(CSV_COLUMNS)
    for q in results:
        head = [q["query"], q["path"], q["pid"], q["camid"]]
        out.writerows(head + [m[c] for c in CSV_COLUMNS[4:]] for m in q["matches"])


@OUTPUT_FORMATS.register(".npz", mode="wb")
def _write_npz(results: SearchResults, f: IO) -> None:
    arrays = {"dist": results.dist, "rows": results.rows}
    for key, field in COLUMNS.items():
        if field in results.gallery:
            arrays[key] = results.column(field)
        if field in results.query:
            arrays[f"query_{key}"] = results.query[field]
    np.savez(f, **arrays)


def output_format(path: str) -> str:
    """The extension of ``path`` if :data:`OUTPUT_FORMATS` has a writer for it, else a :class:`SearchError`."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise SearchError(f"--output {path}: expected a file name ending in {', '.join(OUTPUT_FORMATS.names())}")
    return ext


def write_results(results: SearchResults, path: str) -> None:
    """Write ``results`` to ``path`` in the format its extension names (atomically)."""
    ext = output_format(path)
    write = OUTPUT_FORMATS.get(ext)
    write_atomically(path, lambda f: write(results, f), OUTPUT_FORMATS.meta(ext)["mode"])


def format_results(results: SearchResults) -> List[str]:
    """Lines for the terminal: per query, a header (its path, pid, camid) and one line per match:
    rank, distance, gallery path (or row when the gallery has no paths), row / pid / camid."""
    lines = []
    for q in results:
        about = ", ".join(f"{f} {q[f]}" for f in ("pid", "camid") if q[f] is not None)
        lines.append(f"query {q['query']}" + (f": {q['path']}" if q["path"] else "") + (f" ({about})" if about else ""))
        for m in q["matches"]:
            about = ", ".join([f"row {m['row']}"] * bool(m["path"]) +
                              [f"{f} {m[f]}" for f in ("pid", "camid") if m[f] is not None])
            name = m["path"] or f"row {m['row']}"
            lines.append(f"  {m['rank']:>3}  {m['distance']:.4f}  {name}" + (f"  ({about})" if about else ""))
    return lines


def npz_keys(path: str) -> List[str]:
    """The array names in the ``.npz`` file ``path`` (nothing is read); [] when it is not one (reading it later
    reports why)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return list(f.files) if isinstance(f, np.lib.npyio.NpzFile) else []
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return []


def check_drawable(query: str, gallery: Optional[str], load_index: Optional[str]) -> None:
    """``--html`` / ``--grid`` need image paths on both sides: checked on the files' keys before the search."""
    for side, path, key in (("query", query, "paths"), ("gallery", gallery, "paths"),
                            ("gallery index", load_index, "info_path")):
        keys = npz_keys(path) if path else None
        if keys and key not in keys:
            raise SearchError(f"{path}: --html/--grid show images, but this {side} file has no image paths "
                              f"(keys {sorted(keys)}); write it with esreid extract, which stores them")
