"""Attentive feature Hard-Mix (A-Hard-Mix) of PMM (docs/methods.md §3.3).

    blocks: the h x w map cut into (h / bh) x (w / bw) blocks of bh x bw cells (3 x 2 on 24 x 8 -> 8 x 4 = 32 blocks)
    s_{i,b} = sum_{(u,v) in b} C_i(u, v)                          block score from the guidance map C (B, h, w)
    Omega_i = union of the top-k blocks of s_i (k = 3: 18 / 192 cells ~ 9.4 %)
    pi(i)   ~ Uniform{ j : y_j != y_i }                            a partner of another identity, fresh per call
    P~_i = (1 - Omega_i) * P_i + Omega_i * P_pi(i)                 all channels; the label of P~_i stays y_i

Omega is a constant, so gradients flow into both P_i and P_pi(i). Deviation from the official code (docs/methods.md
§3.3): it hard-codes 8 x 4 blocks and takes partners outside "my group of 4 consecutive indices" (K = 4 batch order);
here any h, w divisible by the block size work and partners are drawn by label. A map whose size is not a multiple of
the block size is an error (no remainder rule: silently shrinking or padding blocks would change Omega's area).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor, nn


def block_scores(cam: Tensor, block: Sequence[int]) -> Tensor:
    """s_{i,b}: sums of ``cam`` (B, h, w) over bh x bw blocks -> (B, h / bh, w / bw)."""
    bh, bw = block
    b, h, w = cam.shape
    if h % bh or w % bw:
        raise ValueError(
            f"A-Hard-Mix: the {h}x{w} feature map is not a multiple of the {bh}x{bw} block size "
            "(model.block_size); choose a block size that divides the map (e.g. 3x2 for 24x8 at 384x128)"
        )
    return cam.reshape(b, h // bh, bh, w // bw, bw).sum(dim=(2, 4))


def salient_blocks(cam: Tensor, block: Sequence[int], k: int) -> Tensor:
    """Omega: (B, h, w) float mask, 1 on the ``k`` blocks of largest score of each image (ties: torch.topk's order)."""
    scores = block_scores(cam, block)  # (B, nh, nw)
    b, nh, nw = scores.shape
    if not 1 <= k <= nh * nw:
        raise ValueError(f"A-Hard-Mix: top_k must be in [1, {nh * nw}] ({nh}x{nw} blocks), got {k}")
    top = scores.reshape(b, -1).topk(k, dim=1).indices  # (B, k)
    chosen = torch.zeros(b, nh * nw, dtype=cam.dtype, device=cam.device).scatter_(1, top, 1.0)
    bh, bw = block
    return chosen.reshape(b, nh, 1, nw, 1).expand(b, nh, bh, nw, bw).reshape(b, nh * bh, nw * bw)


def draw_partners(pids: Tensor, generator: torch.Generator) -> Tensor:
    """pi (B,) int64: for each i a batch index drawn uniformly among those with another label than pids[i].

    Drawn on ``generator``'s device (CPU) and moved to ``pids``' device. Raises if some sample has no such partner.
    """
    other = (pids[:, None] != pids[None, :]).cpu()  # (B, B)
    if not other.any(dim=1).all():
        raise ValueError("A-Hard-Mix: every sample needs a partner of another identity, but the batch has one identity")
    u = torch.rand(other.shape, generator=generator, device=generator.device)
    return u.masked_fill(~other, -1.0).argmax(dim=1).to(pids.device)  # uniform over the allowed j (ties: prob. 0)


def hard_mix(p: Tensor, omega: Tensor, partners: Tensor) -> Tensor:
    """P~ = (1 - Omega) * P + Omega * P[partners]. p (B, C, h, w), omega (B, h, w), partners (B,) -> (B, C, h, w)."""
    m = omega.to(p.dtype)[:, None]  # broadcast over channels
    return (1 - m) * p + m * p[partners]


class AttentiveHardMix(nn.Module):
    """A-Hard-Mix as a module owning the partner RNG: the trainer checkpoints any ``generator`` attribute.

    ``forward(p (B, C, h, w), cam (B, h, w), pids (B,)) -> (mixed (B, C, h, w), omega (B, h, w))``; each call draws
    fresh partners (one call per PMM stage).
    """

    def __init__(self, block: Sequence[int] = (3, 2), k: int = 3):
        super().__init__()
        if len(block) != 2 or min(block) < 1:
            raise ValueError(f"model.block_size: expected [bh, bw] of positive integers, got {list(block)}")
        if k < 1:
            raise ValueError(f"model.top_k: expected a positive integer, got {k}")
        self.block: Tuple[int, int] = (int(block[0]), int(block[1]))
        self.k = k
        self.generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))  # partner draws

    def forward(self, p: Tensor, cam: Tensor, pids: Tensor) -> Tuple[Tensor, Tensor]:
        if cam.shape != (p.shape[0], *p.shape[2:]):
            raise ValueError(f"A-Hard-Mix: guidance map {tuple(cam.shape)} does not match features {tuple(p.shape)}")
        omega = salient_blocks(cam, self.block, self.k)
        return hard_mix(p, omega, draw_partners(pids, self.generator)), omega

    def extra_repr(self) -> str:
        return f"block={self.block}, k={self.k}"
