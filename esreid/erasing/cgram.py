"""CG-RAM: Confidence Gradient-weighted Ranking Activation Mapping (ES-Net §III-B/C, eqs. 2-5).

The salient map of an image at a layer with output ``A`` (B, C, h, w) is

    M = ReLU( sum_k dS/dA^k * A^k )            (eqs. 3-4; per location, no spatial averaging as in Grad-CAM)

where ``S`` is a cosine confidence between retrieval vectors: of a (query, gallery) pair at test time (eq. 2), or the
exp-weighted sum over each sample and its easiest positive in the PK batch during training (eq. 5).

Entry points:
    * :func:`salient_map` - the core: maps from a scalar confidence and a leaf tensor ``A`` it depends on.
    * :func:`batch_confidence` / :func:`easiest_positive` - eq. 5 on a batch of retrieval vectors.
    * :func:`cgram_pair` - test time, any model, any layer (forward hook, no model surgery).
    * :func:`cgram_batch` - training time, any model, any layer (the hook-based version of what ES-Net does inline).

Only ``A`` receives a gradient: the hook replaces the layer output by a detached leaf, parameters get no ``.grad``,
and the model runs in eval mode so no BatchNorm running statistics change.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Features = Union[Tensor, Sequence[Tensor]]


# ----------------------------------------------------------------------------------------------------------------
# Equations
# ----------------------------------------------------------------------------------------------------------------
def cosine_confidence(fq: Tensor, fg: Tensor) -> Tensor:
    """Eq. 2: S_{q,g} = <f_q, f_g> / (||f_q|| ||f_g||) row by row. fq, fg: (B, D) -> (B,)."""
    return F.cosine_similarity(fq, fg, dim=1, eps=1e-12)


def easiest_positive(f: Tensor, pids: Tensor) -> Tuple[Tensor, Tensor]:
    """The easiest positive of each sample in a batch (§III-C-1): same identity, not itself, largest cosine.

    f: (B, D) retrieval vectors; pids: (B,) identities. Returns ``index`` (B,) int64 and ``valid`` (B,) bool
    (False for a sample whose identity appears once in the batch; its index then points at itself).
    The smallest distance is the largest cosine (distances are taken on the same vectors as eq. 2).
    """
    with torch.no_grad():
        fn = F.normalize(f.detach().float(), dim=1)
        sim = fn @ fn.t()  # (B, B)
        same = pids[:, None] == pids[None, :]
        same.fill_diagonal_(False)
        sim = sim.masked_fill(~same, float("-inf"))
        index = sim.argmax(dim=1)
        valid = same.any(dim=1)
        index = torch.where(valid, index, torch.arange(len(pids), device=pids.device))
    return index, valid


def batch_confidence(f: Tensor, pids: Tensor, detach_weight: bool = False) -> Tensor:
    """Eq. 5: S_batch = sum_i exp(S_{i,p(i)}) * S_{i,p(i)} over samples with a positive in the batch.

    f: (B, D) retrieval vectors (differentiable); pids: (B,). Returns a scalar.
    ``detach_weight`` treats exp(S) as a constant weight (a variant; the default differentiates eq. 5 literally).
    """
    index, valid = easiest_positive(f, pids)
    s = cosine_confidence(f, f[index])  # (B,) eq. 2 for each (x_i, x_p(i))
    weight = torch.exp(s.detach() if detach_weight else s)
    return (weight * s * valid.to(s.dtype)).sum()  # eq. 5


def salient_map(score: Tensor, a: Tensor, retain_graph: bool = False) -> Tensor:
    """Eqs. 3-4: M = ReLU(sum_k dS/dA^k * A^k). score: scalar; a: (B, C, h, w) requiring grad -> (B, h, w)."""
    (grad,) = torch.autograd.grad(score, a, retain_graph=retain_graph)  # eq. 3, phi = dS/dA
    return torch.relu((grad * a).sum(dim=1)).detach()  # eq. 4


# ----------------------------------------------------------------------------------------------------------------
# Hook-based entry points for any model
# ----------------------------------------------------------------------------------------------------------------
def retrieval_vector(output: Features) -> Tensor:
    """The vector a model retrieves with (without flip): a tensor as is, or per-branch L2-normalised and concatenated
    for a list of branch features (the evaluator's convention, docs/architecture.md). Returns (B, D)."""
    if isinstance(output, Tensor):
        return output
    return torch.cat([F.normalize(x, dim=1) for x in output], dim=1)


def resolve_layer(model: nn.Module, layer: Union[str, nn.Module]) -> nn.Module:
    """``layer`` as a module: a module of ``model`` or a dotted name such as ``"esb_layers.1"``."""
    if isinstance(layer, nn.Module):
        return layer
    modules = dict(model.named_modules())
    if layer not in modules:
        names = [n for n in modules if n]
        raise KeyError(f"CG-RAM layer {layer!r} is not a module of {type(model).__name__}; some names: {names[-8:]}")
    return modules[layer]


@contextlib.contextmanager
def capture_layer(module: nn.Module) -> Iterator[List[Tensor]]:
    """Replace ``module``'s output by a detached leaf that requires grad; yields the list of captured leaves.

    The downstream graph is then built from the leaf, so gradients stop at the layer (nothing flows into earlier
    parameters) - this is the "gradient to layer L only" of the training-time CG-RAM.
    """
    captured: List[Tensor] = []

    def hook(_mod: nn.Module, _inp: tuple, out: Tensor) -> Tensor:
        if not isinstance(out, Tensor) or out.dim() != 4:
            raise TypeError(f"CG-RAM layer must output a (B, C, h, w) tensor, got {type(out).__name__}")
        leaf = out.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put every submodule in eval mode (no BatchNorm statistic updates), restoring each one's mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _forward_captured(
    model: nn.Module, layer: Union[str, nn.Module], images: Tensor, feature_fn: Callable[[Features], Tensor]
) -> Tuple[Tensor, Tensor]:
    """Eval-mode forward of ``images`` (B, 3, H, W) with ``layer`` captured; returns (A (B, C, h, w), f (B, D))."""
    module = resolve_layer(model, layer)
    with eval_mode(model), torch.enable_grad(), capture_layer(module) as captured:
        f = feature_fn(model(images))
    if len(captured) != 1:
        raise RuntimeError(f"CG-RAM layer ran {len(captured)} times in one forward; it must run exactly once")
    return captured[0], f


def cgram_pair(
    model: nn.Module,
    layer: Union[str, nn.Module],
    query: Tensor,
    gallery: Tensor,
    feature_fn: Callable[[Features], Tensor] = retrieval_vector,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Test-time CG-RAM of (query, gallery) pairs.

    query, gallery: (B, 3, H, W) normalised images, pair i = (query[i], gallery[i]). Returns the maps of the queries
    (B, h, w), of the galleries (B, h, w), and the confidences S (B,) of eq. 2. The pairs are run as one eval-mode
    batch; in eval mode the samples are independent, so summing S over pairs gives each pair's own gradient.
    """
    if query.shape != gallery.shape:
        raise ValueError(f"query {tuple(query.shape)} and gallery {tuple(gallery.shape)} must have the same shape")
    b = query.shape[0]
    a, f = _forward_captured(model, layer, torch.cat([query, gallery]), feature_fn)
    s = cosine_confidence(f[:b], f[b:])  # eq. 2
    m = salient_map(s.sum(), a)
    return m[:b], m[b:], s.detach()


def cgram_batch(
    model: nn.Module,
    layer: Union[str, nn.Module],
    images: Tensor,
    pids: Tensor,
    detach_weight: bool = False,
    feature_fn: Optional[Callable[[Features], Tensor]] = None,
) -> Tensor:
    """Training-time CG-RAM of a PK batch (eq. 5 with easiest positives): images (B, 3, H, W), pids (B,) -> (B, h, w).

    Works on any model whose eval forward returns retrieval features; the model's modes and parameter gradients are
    left untouched.
    """
    a, f = _forward_captured(model, layer, images, feature_fn or retrieval_vector)
    return salient_map(batch_confidence(f, pids, detach_weight), a)
