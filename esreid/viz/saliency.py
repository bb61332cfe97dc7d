"""CG-RAM overlays (ES-Net Fig. 5): why did a query match a gallery image?

``save_pair_figure`` draws query | query + map | gallery | gallery + map into a PNG (matplotlib, Agg canvas);
``visualize_main`` is ``esreid visualize --config C --weights W --query IMG --gallery IMG --out PNG``.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def upsample_map(m: Tensor, size: tuple) -> np.ndarray:
    """A CG-RAM map (h, w) bilinearly resized to ``size`` = (H, W) and scaled to [0, 1] (all-zero stays zero)."""
    up = F.interpolate(m[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    peak = float(up.max())
    return (up / peak if peak > 0 else up).cpu().numpy()


def save_pair_figure(
    query: Tensor, gallery: Tensor, m_query: Tensor, m_gallery: Tensor, out: str, score: Optional[float] = None
) -> None:
    """Write a PNG: query, query with its CG-RAM heat map, gallery, gallery with its heat map.

    query, gallery: uint8 (3, H, W) RGB; m_query, m_gallery: (h, w) maps; ``score``: the cosine confidence (eq. 2).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    panels = [(query, None, "query"), (query, m_query, "query CG-RAM"),
              (gallery, None, "gallery"), (gallery, m_gallery, "gallery CG-RAM")]
    for i, (img, m, title) in enumerate(panels):
        ax = fig.add_subplot(1, 4, i + 1)
        rgb = img.permute(1, 2, 0).cpu().numpy()
        ax.imshow(rgb)
        if m is not None:
            ax.imshow(upsample_map(m, rgb.shape[:2]), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if score is not None:
        fig.suptitle(f"S(q, g) = {score:.3f}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")


def visualize_main(args: argparse.Namespace) -> int:
    """``esreid visualize``: CG-RAM maps of a (query, gallery) pair for a trained model, saved as a PNG."""
    from esreid.config import load_config
    from esreid.data.transforms import TestTransform, decode_resize
    from esreid.engine.checkpoint import load_trained_model
    from esreid.erasing.cgram import cgram_pair

    cfg = load_config(args.config, args.overrides)
    model = load_trained_model(cfg, args.weights)
    device = torch.device(args.device)
    model.to(device).eval()
    raw = torch.stack([decode_resize(path, cfg.data.height, cfg.data.width) for path in (args.query, args.gallery)])
    x = TestTransform(cfg.data)(raw.to(device))
    layer = args.layer or model.saliency_layer
    m_q, m_g, s = cgram_pair(model, x[:1], x[1:], layer)
    save_pair_figure(raw[0], raw[1], m_q[0], m_g[0], args.out, float(s[0]))
    rule = model.retrieval
    what = "cosine (eq. 2)" if rule.metric == "cosine" else "minus the squared Euclidean distance"
    print(f"S(query, gallery) = {float(s[0]):.4f}, the {what} of the ranked features (flip={rule.flip}, "
          f"normalize={rule.normalize}); CG-RAM at '{layer}' written to {args.out}")
    return 0
