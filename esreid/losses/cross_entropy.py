"""Cross-entropy with optional label smoothing (BoT / BDB / PMM; docs/methods.md §0)."""

from __future__ import annotations

import torch


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """``mean_b -Σ_c q_c log softmax(z_b)_c`` with ``q_c = (1-ε)·1[c=y_b] + ε/N``.

    Args:
        logits: ``(B, N)``; computed in float32.
        targets: ``(B,)`` int64 in ``[0, N)``.
        label_smoothing: ε in ``[0, 1)``; 0 is plain cross-entropy.
    Returns:
        scalar.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy: expected logits (B, N) and targets (B,), got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    n = logits.shape[1]
    if not torch.compiler.is_compiling():  # the range check reads values back (a graph break under torch.compile)
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"cross_entropy: target ids must be in [0, {n}) (number of classes), "
                             f"got range [{lo}, {hi}]")
    log_p = torch.log_softmax(logits.float(), dim=1)
    nll = -log_p.gather(1, targets[:, None]).squeeze(1)  # -log p_y
    uniform = -log_p.mean(dim=1)  # -(1/N) Σ_c log p_c
    return ((1.0 - label_smoothing) * nll + label_smoothing * uniform).mean()
