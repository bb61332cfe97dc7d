"""CG-RAM overlays (ES-Net Fig. 5): why did a query match a gallery image?

``save_pair_figure`` draws query | query + map | gallery | gallery + map into a PNG (matplotlib, Agg canvas; the
overlay is :func:`esreid.viz.images.overlay`, shared with the rank grids);
``visualize_main`` is ``esreid visualize --config C --weights W --query IMG --gallery IMG --out PNG``.
"""

from __future__ import annotations

import argparse
from typing import Optional

import torch
from torch import Tensor

from esreid.viz.images import as_rgb, atomic_write, figure_png, overlay


def save_pair_figure(
    query: Tensor, gallery: Tensor, m_query: Tensor, m_gallery: Tensor, out: str, score: Optional[float] = None
) -> None:
    """Write a PNG: query, query with its CG-RAM heat map, gallery, gallery with its heat map.

    query, gallery: uint8 (3, H, W) RGB; m_query, m_gallery: (h, w) maps; ``score``: the cosine confidence (eq. 2).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5))
    q, g = as_rgb(query), as_rgb(gallery)
    panels = [(q, "query"), (overlay(q, m_query), "query CG-RAM"),
              (g, "gallery"), (overlay(g, m_gallery), "gallery CG-RAM")]
    for i, (rgb, title) in enumerate(panels):
        ax = fig.add_subplot(1, 4, i + 1)
        ax.imshow(rgb)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if score is not None:
        fig.suptitle(f"S(q, g) = {score:.3f}")
    atomic_write(out, figure_png(fig))


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
