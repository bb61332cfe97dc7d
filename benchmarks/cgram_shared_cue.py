"""Why CG-RAM misses a cue the pair shares: ES-Net's eqs. 2-5 on hand-built feature maps (docs/methods.md §1.3).

Hypothesis (issue 19): the gradient of the cosine to the easiest positive is nearly orthogonal to what the two
images share, so CG-RAM (eqs. 3-4) puts little mass on a salient cue both images carry, and BESM erases elsewhere.

What eqs. 2-4 imply with GAP pooling (the Base's; the ESB's P-pooling and the BNNeck change the constants, not the
form): f = (1/N) sum_x A(x) over the N = h*w locations, S = cos(f_i, f_p) (eq. 2), and

    dS/dA_i(x) = g / N,   g = (f_p/|f_p| - S f_i/|f_i|) / |f_i|          (the same g at every location)
    M_i(x) = ReLU(<g, A_i(x)>) / N                                         (eqs. 3-4)

* g is orthogonal to f_i (the cosine is scale-invariant), so the pre-ReLU map sums to ZERO over the locations:
  CG-RAM is a signed contrast, positive where A_i(x) points along the part of the positive's feature that is
  orthogonal to the query's own.
* Write f_i = s + e_i, f_p = s + e_p with s the shared part and e_i, e_p each view's own part, orthogonal, |e| = E,
  |s| = S_h. Then g |f_i| |f| = s E^2/|f|^2 + e_p - (S_h^2/|f|^2) e_i: the shared part enters with the factor
  E^2/|f|^2 = 1 - S, small for the easiest positive (the largest S), while the positive's own part e_p enters with
  factor 1. cos(g, s) ~ E / (sqrt(2) S_h): nearly orthogonal when the shared part dominates.
* Eq. 5 (training): the easiest-positive terms exp(S_ij) S_ij; for a pair that are each other's easiest positive the
  gradient to A_i is (1 + S) exp(S) (times 2) times eq. 2's: the same map up to a positive factor.

This script measures it by brute force (torch.autograd through eq. 2 and eq. 5 on random non-negative maps, the
same code as training: esreid.erasing.cgram) and prints, per setting, the share of CG-RAM's positive mass on the
cue cells, how often the cue is inside BESM's top-R cells, cos(g, shared part), and the same for a plain activation
map (|A(x)|, the feature norm per cell) as the reference of "salient". Run: ``python benchmarks/cgram_shared_cue.py``
(seconds; deterministic).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import hardware  # noqa: E402
from esreid.erasing.cgram import batch_confidence, cosine_confidence, salient_map  # noqa: E402

H, W, C = 8, 4, 64  # an 8x4 map (resnet_tiny_os8 at 64x32), 64 channels
CUE_CELLS = ((2, 1),)  # one cell of 32: the cue's share of the map ~3% (the trap's patch covers ~2.5% of the image)
R = 0.2  # BESM's ratio: the top round(0.2 * 32) = 6 cells


def pair_maps(gen: torch.Generator, cue: float, view: float, kind: str, body: float = 1.0):
    """Feature maps (2, C, H, W) of two images of one identity: every cell carries the identity's body feature
    (shared, strength ``body``) and its own view feature per image (``view``); the cue cells also carry the cue
    feature (shared, strength ``cue``). ``kind``: ``relu`` = |N(0, 1)| vectors (non-negative: they overlap as ReLU
    features do), ``gauss`` = N(0, 1) vectors (nearly orthogonal: the idealisation of the analysis above),
    ``relu+bn`` = ``relu`` maps whose pooled vector goes through an eval-mode BatchNorm (the BNNeck, §0)."""
    def vec(*shape):
        v = torch.randn(*shape, C, generator=gen)
        return v if kind == "gauss" else v.abs()

    shared = body * vec(H, W)  # (H, W, C): the identity's appearance at each cell, the same in both images
    cue_feature = cue * vec()
    maps = []
    for _ in range(2):
        a = shared + view * vec(H, W)  # each image's own view part (pose, background, noise)
        for y, x in CUE_CELLS:
            a[y, x] += cue_feature
        maps.append(a.permute(2, 0, 1))
    return torch.stack(maps), shared.sum((0, 1)) / (H * W), cue_feature


def measure(cue: float, view: float, draws: int, use_eq5: bool, kind: str) -> Dict[str, float]:
    """Means over ``draws`` random pairs of: CG-RAM's positive mass on the cue cells (share), the cue inside the top-R
    cells (fraction), the cue's pre-ReLU value > 0 (fraction), its |value| among the top-R |values| (fraction), the
    pre-ReLU map's sum relative to its absolute mass, cos(g, shared), and the activation map's share on the cue."""
    gen = torch.Generator().manual_seed(0)
    cue_mask = torch.zeros(H, W, dtype=torch.bool)
    for y, x in CUE_CELLS:
        cue_mask[y, x] = True
    k = int(R * H * W + 0.5)
    mean, std = torch.zeros(C), torch.ones(C)
    if kind == "relu+bn":  # the BNNeck's running statistics: of the pooled features of 256 other identities
        pooled = torch.stack([pair_maps(gen, cue, view, kind)[0][0].mean((1, 2)) for _ in range(256)])
        mean, std = pooled.mean(0), pooled.std(0)
    out = {"mass": 0.0, "top": 0.0, "positive": 0.0, "top_abs": 0.0, "signed_sum": 0.0, "cos_g_shared": 0.0,
           "activation": 0.0, "S": 0.0}
    for _ in range(draws):
        maps, shared, cue_feature = pair_maps(gen, cue, view, kind)
        a = maps.clone().requires_grad_(True)
        f = (a.mean((2, 3)) - mean) / std  # GAP (2, C), then the eval-mode BNNeck for relu+bn (identity otherwise)
        if use_eq5:
            score = batch_confidence(f, torch.tensor([0, 0]))  # eq. 5: each one's easiest positive is the other
        else:
            score = cosine_confidence(f[:1], f[1:]).sum()  # eq. 2
        (grad,) = torch.autograd.grad(score, a, retain_graph=True)
        pre = (grad * a).sum(1)[0].detach()  # eqs. 3-4 before the ReLU, image 0: (H, W)
        m = salient_map(score, a)[0]  # the library's eqs. 3-4
        assert torch.allclose(m, pre.clamp(min=0), atol=1e-6)
        g = grad[0, :, 0, 0] * H * W * std  # the same at every cell (GAP): dS/df_i
        f0, f1 = f[0].detach(), f[1].detach()
        s = float(cosine_confidence(f0[None], f1[None]))
        analytic = (f1 / f1.norm() - s * f0 / f0.norm()) / f0.norm()
        scale = 2 * (1 + s) * torch.exp(torch.tensor(s)) if use_eq5 else 1.0
        assert torch.allclose(g, scale * analytic, rtol=1e-3, atol=1e-6), "dS/df_i differs from the analytic form"
        sh = (shared + cue_feature * cue_mask.sum() / (H * W) - mean) / std  # the pooled shared part, as f sees it
        out["mass"] += float(m[cue_mask].sum() / m.sum()) if m.sum() > 0 else 0.0
        out["top"] += float(cue_mask.flatten()[m.flatten().topk(k).indices].any())
        out["positive"] += float((pre[cue_mask] > 0).all())
        out["top_abs"] += float(cue_mask.flatten()[pre.abs().flatten().topk(k).indices].any())
        out["signed_sum"] += float(pre.sum() / pre.abs().sum())
        out["cos_g_shared"] += float(torch.nn.functional.cosine_similarity(g, sh, dim=0))
        act = maps[0].norm(dim=0)  # |A(x)|
        out["activation"] += float(act[cue_mask].sum() / act.sum())
        out["S"] += s
    return {key: v / draws for key, v in out.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=int, default=200)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"hardware: {hardware()}")
    print(f"maps {C}x{H}x{W}, cue on {len(CUE_CELLS)} of {H * W} cells (chance share {len(CUE_CELLS) / (H * W):.1%}, "
          f"chance of the cue in BESM's top {R:.0%}: {R:.0%}); {args.draws} random pairs per row; GAP pooling; "
          "cos(dS/df_i, shared): with the pooled shared part as f sees it\n")
    print("| features | score | cue | view | S = cos(f_i, f_p) | cos(dS/df_i, shared) | CG-RAM mass on cue | "
          "cue in top-R | cue value > 0 | |cue value| in top-R | |A| mass on cue | pre-ReLU sum / abs mass |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in ("relu", "relu+bn", "gauss"):
        for use_eq5 in (False, True):
            for cue, view in ((0.0, 0.5), (3.0, 0.25), (3.0, 0.5), (3.0, 1.0), (8.0, 0.5), (8.0, 1.0)):
                if use_eq5 and (cue, view) != (3.0, 0.5):
                    continue  # eq. 5 = eq. 2 times a positive factor for a mutual pair: one row shows it
                r = measure(cue, view, args.draws, use_eq5, kind)
                print(f"| {kind} | {'eq. 5' if use_eq5 else 'eq. 2'} | {cue:g} | {view:g} | {r['S']:.3f} | "
                      f"{r['cos_g_shared']:+.3f} | {r['mass']:.1%} | {r['top']:.0%} | {r['positive']:.0%} | "
                      f"{r['top_abs']:.0%} | {r['activation']:.1%} | {r['signed_sum']:+.1e} |")


if __name__ == "__main__":
    main()
