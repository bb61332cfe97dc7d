"""Shared drawing helpers: image inputs, CG-RAM heat-map overlays, PNG encoding and atomic file writes.

Every figure of ``esreid.viz`` (pair figures, rank grids, training plots, reports) goes through these, so an image is
read, a map is upsampled and blended, and a file is written in exactly one way.
"""

from __future__ import annotations

import io
import os
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

# an image: uint8 (3, H, W) RGB tensor or array, (H, W, 3) array, or an image file path
ImageLike = Union[torch.Tensor, np.ndarray, str, "os.PathLike[str]"]
MapLike = Union[torch.Tensor, np.ndarray]

OVERLAY_ALPHA = 0.5  # weight of the heat map in the blend (ES-Net Fig. 5 style: image still visible)
OVERLAY_CMAP = "jet"


def as_rgb(image: ImageLike) -> np.ndarray:
    """``image`` as a uint8 ``(H, W, 3)`` RGB array: a path is decoded as the loaders decode it
    (:func:`esreid.data.transforms.decode_image`: 16-bit grey scaled, a special or oversized file refused); a
    ``(3, H, W)`` tensor or array (the loaders' layout) is transposed; a ``(H, W, 3)`` array is taken as is."""
    if isinstance(image, (str, os.PathLike)):
        from esreid.data.transforms import decode_image

        return np.asarray(decode_image(os.fspath(image)))
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim != 3 or 3 not in (a.shape[0], a.shape[-1]):
        raise ValueError(f"expected an RGB image (3, H, W) or (H, W, 3), got shape {a.shape}")
    if a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {a.dtype}")
    return np.ascontiguousarray(a)


def upsample_map(m: MapLike, size: Tuple[int, int]) -> np.ndarray:
    """A CG-RAM map ``(h, w)`` bilinearly resized to ``size`` = (H, W) and scaled to [0, 1] (all-zero stays zero):
    the same bilinear upsampling BESM applies before erasing (docs/methods.md §1.4). Returns float32 ``(H, W)``."""
    t = torch.as_tensor(np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m), dtype=torch.float32)
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D saliency map (h, w), got shape {tuple(t.shape)}")
    up = F.interpolate(t[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    peak = float(up.max())
    return (up / peak if peak > 0 else up).numpy()


def overlay(rgb: np.ndarray, m: MapLike, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend the heat map of ``m`` (jet colour map over [0, 1] after :func:`upsample_map`) onto ``rgb`` uint8
    ``(H, W, 3)``: ``(1 - alpha)·image + alpha·colour``. Returns uint8 ``(H, W, 3)``."""
    from matplotlib import colormaps

    heat = colormaps[OVERLAY_CMAP](upsample_map(m, rgb.shape[:2]))[..., :3] * 255.0
    return np.round((1.0 - alpha) * rgb.astype(np.float32) + alpha * heat).astype(np.uint8)


def figure_png(fig, dpi: int = 100) -> bytes:
    """A matplotlib ``Figure`` (drawn on its own Agg canvas, never pyplot's global state) encoded as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()

