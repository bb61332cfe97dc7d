"""CG-RAM overlays (ES-Net Fig. 5): why did a query match a gallery image?

``save_pair_figure`` draws query | query + map | gallery | gallery + map into a PNG (matplotlib, Agg canvas; the
overlay is :func:`esreid.viz.images.overlay`, shared with the rank grids);
``visualize_main`` is ``esreid visualize --config C --weights W --query IMG --gallery IMG --out PNG``.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

import torch
from torch import Tensor, nn

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


def default_layer(model: nn.Module) -> str:
    """The model's CG-RAM layer: ``model.cgram_layer`` (ES-Net: the ESB's res_conv5) or the last ResNet stage named
    ``layer4`` (an ``nn.Sequential`` of blocks: AELM's train-only erasing head ``heads.layer4`` is not one)."""
    name = getattr(model, "cgram_layer", None)
    if name:
        return name
    names = [n for n, m in model.named_modules() if n.split(".")[-1] == "layer4" and isinstance(m, nn.Sequential)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no ResNet stage named 'layer4'; pass --layer")
    return names[-1]


def visualize_main(argv: Optional[List[str]] = None) -> int:
    """``esreid visualize``: CG-RAM maps of a (query, gallery) pair for a trained model, saved as a PNG."""
    from esreid.config import load_config
    from esreid.data.transforms import TestTransform, decode_resize
    from esreid.engine.checkpoint import load_trained_model
    from esreid.erasing.cgram import cgram_pair

    p = argparse.ArgumentParser(prog="esreid visualize", description=visualize_main.__doc__)
    p.add_argument("--config", required=True, help="the config the model was trained with")
    p.add_argument("--weights", required=True, help="checkpoint or state dict of the trained model")
    p.add_argument("--query", required=True, help="query image file")
    p.add_argument("--gallery", required=True, help="gallery image file")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--layer", default="", help="module name of the CG-RAM layer (default: the model's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("opts", nargs="*", help="dotted config overrides")
    args = p.parse_args(argv)

    cfg = load_config(args.config, args.opts)
    model = load_trained_model(cfg, args.weights)
    device = torch.device(args.device)
    model.to(device).eval()
    raw = torch.stack([decode_resize(path, cfg.data.height, cfg.data.width) for path in (args.query, args.gallery)])
    x = TestTransform(cfg.data)(raw.to(device))
    layer = args.layer or default_layer(model)
    m_q, m_g, s = cgram_pair(model, layer, x[:1], x[1:])
    save_pair_figure(raw[0], raw[1], m_q[0], m_g[0], args.out, float(s[0]))
    print(f"S(query, gallery) = {float(s[0]):.4f} (cosine of the unflipped features, eq. 2); CG-RAM at '{layer}' "
          f"written to {args.out}")
    return 0
