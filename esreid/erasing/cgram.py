"""CG-RAM: Confidence Gradient-weighted Ranking Activation Mapping (ES-Net §III-B/C, eqs. 2-5).

The salient map of an image at a layer with output ``A`` (B, C, h, w) is

    M = ReLU( sum_k dS/dA^k * A^k )            (eqs. 3-4; per location, no spatial averaging as in Grad-CAM)

where ``S`` is a cosine confidence between retrieval vectors: of a (query, gallery) pair at test time (eq. 2), or the
exp-weighted sum over each sample and its easiest positive in the PK batch during training (eq. 5).

Entry points:
    * :func:`salient_map` - the core: maps from a scalar confidence and a leaf tensor ``A`` it depends on.
    * :func:`batch_confidence` / :func:`easiest_positive` - eq. 5 on a batch of retrieval vectors.
    * :func:`cgram_pair` - test time, any model, any layer (forward hook, no model surgery), through the model's
      retrieval rule: the explained similarity is the one the evaluator ranks with (flip included).
    * :func:`cgram_batch` - training time, any model, any layer (the hook-based version of what ES-Net does inline).

Only ``A`` receives a gradient: the hook replaces the layer output by a detached leaf, parameters get no ``.grad``,
and the model runs in eval mode so no BatchNorm running statistics change.
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esreid.errors import EsreidError


class LayerError(EsreidError, ValueError):
    """A CG-RAM layer that is not a module of the model, does not output a (B, C, h, w) map, or is not on the single
    path of the retrieval features (e.g. ``esreid explain --layer``, ``diagnostics.layer``)."""


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
def contributions(score: Tensor, leaves: Sequence[Tensor], retain_graph: bool = False) -> List[Tensor]:
    """``sum_k dS/dA^k * A^k`` (B, h, w) for each captured map ``A`` (B, C, h, w) in ``leaves`` (eqs. 3-4 before the
    ReLU): each location's share of the first-order change of ``S``, so shares of several passes add up."""
    grads = torch.autograd.grad(score, list(leaves), retain_graph=retain_graph)  # eq. 3, phi = dS/dA
    return [(g * a).sum(dim=1).detach() for g, a in zip(grads, leaves)]


def resolve_layer(model: nn.Module, layer: Union[str, nn.Module]) -> nn.Module:
    """``layer`` as a module: a module of ``model`` or a dotted name such as ``"esb.stages.layer4"``."""
    if isinstance(layer, nn.Module):
        return layer
    modules = dict(model.named_modules())
    if layer not in modules:
        names = [n for n in modules if n]
        close = difflib.get_close_matches(layer, names, n=4, cutoff=0.5) or names[-4:]
        raise LayerError(f"CG-RAM layer {layer!r} is not a module of {type(model).__name__}; did you mean one of "
                         f"{', '.join(close)}? (the names are those of model.named_modules())")
    return modules[layer]


@contextlib.contextmanager
def capture_layer(module: nn.Module) -> Iterator[List[Tensor]]:
    """Replace ``module``'s output by a detached leaf that requires grad; yields the list of captured leaves.

    The downstream graph is then built from the leaf, so gradients stop at the layer (nothing flows into earlier
    parameters) - this is the "gradient to layer L only" of the training-time CG-RAM. The layer's successors receive a
    copy of the leaf, so an in-place operation after it (the ``ReLU(inplace=True)`` after a BatchNorm) modifies the
    copy, never the leaf: any module with a 4-d output can be explained, BatchNorm outputs included.
    Compiled regions (``solver.compile``) run their eager code meanwhile, so the hook runs as written instead of
    being traced into a region's graph.
    """
    captured: List[Tensor] = []

    def hook(_mod: nn.Module, _inp: tuple, out: Tensor) -> Tensor:
        if not isinstance(out, Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise LayerError(f"CG-RAM layer {type(_mod).__name__} must output a (B, C, h, w) map, got {shape}")
        leaf = out.detach().to(torch.promote_types(out.dtype, torch.float32)).requires_grad_(True)
        captured.append(leaf)
        return leaf.to(out.dtype).clone()  # successors may modify it in place

    handle = module.register_forward_hook(hook)
    try:
        with torch.compiler.set_stance("force_eager"):
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


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily stop every parameter from requiring grad (restoring each flag after): the forward then records
    no graph before the captured layer, which test-time CG-RAM never differentiates (less memory, faster)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _forward_captured(model: nn.Module, layer: Union[str, nn.Module], images: Tensor, flip: bool,
                      feature_fn: Callable[[List[Tensor]], Tensor]) -> Tuple[List[Tensor], Tensor]:
    """Eval-mode ``model.branch_features`` of ``images`` (B, 3, H, W) -- summed with their mirror images' when
    ``flip``, as the evaluator ranks -- with ``layer`` captured. Returns the captured maps ``[A]`` (``[A, A_mirrored]``
    with flip), each (B, C, h, w), and ``feature_fn(branches)`` (B, D)."""
    module = resolve_layer(model, layer)
    with eval_mode(model), torch.enable_grad(), capture_layer(module) as captured:
        f = feature_fn(model.branch_features(images, flip))
    runs = 2 if flip else 1
    if len(captured) != runs:
        raise LayerError(f"CG-RAM layer ran {len(captured)} times for {runs} forward pass(es); it must run once per "
                         "pass (choose a layer on the path of the retrieval features)")
    return captured, f


def _maps(score: Tensor, captured: List[Tensor]) -> Tensor:
    """Eq. 4 over one or two passes: ``ReLU(c + mirror(c_mirrored))`` (B, h, w); the mirrored pass's shares are
    flipped back onto the image's own layout before they are added (the features are summed the same way)."""
    parts = contributions(score, captured)
    total = parts[0] if len(parts) == 1 else parts[0] + torch.flip(parts[1], dims=[2])
    return torch.relu(total)


def cgram_pair(model: nn.Module, query: Tensor, gallery: Tensor,
               layer: Optional[Union[str, nn.Module]] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Test-time CG-RAM of (query, gallery) pairs for a :class:`~esreid.models.base.ReIDModel`, explaining exactly
    the similarity it ranks with: its retrieval rule (flip, per-branch L2, metric) gives the vectors and ``S``.

    query, gallery: (B, 3, H, W) normalised images, pair i = (query[i], gallery[i]); ``layer``: a module or dotted name
    (default ``model.saliency_layer``). Returns the maps of the queries (B, h, w), of the galleries (B, h, w), and the
    similarities S (B,): eq. 2's cosine for cosine models, minus the squared Euclidean distance otherwise
    (:meth:`RetrievalRule.similarity`; the ranking distance is ``-S``, ``1 - cos`` for cosine). The pairs run as one
    eval-mode batch; samples are independent in eval mode, so summing S over pairs gives each pair's own gradient.
    """
    if query.shape != gallery.shape:
        raise ValueError(f"query {tuple(query.shape)} and gallery {tuple(gallery.shape)} must have the same shape")
    b, rule = query.shape[0], model.retrieval
    with frozen_parameters(model):
        captured, f = _forward_captured(model, layer or model.saliency_layer, torch.cat([query, gallery]), rule.flip,
                                        rule.combine)
    s = rule.similarity(f[:b], f[b:])  # eq. 2 (cosine) or -||f_q - f_g||^2
    m = _maps(s.sum(), captured)
    shown = s + 1 if rule.metric == "cosine" else s  # cosine: report eq. 2's cos itself
    return m[:b], m[b:], shown.detach()


def cgram_batch(model: nn.Module, images: Tensor, pids: Tensor, layer: Optional[Union[str, nn.Module]] = None,
                detach_weight: bool = False, feature_fn: Optional[Callable[[List[Tensor]], Tensor]] = None) -> Tensor:
    """Training-time CG-RAM of a PK batch (eq. 5 with easiest positives): images (B, 3, H, W), pids (B,) -> (B, h, w).

    The retrieval vector is the model's (its retrieval rule's combination of the branch features, without flip, as
    in training) unless ``feature_fn`` picks another from the branch features; ``layer`` defaults to
    ``model.saliency_layer``. The model's modes and parameter gradients are left untouched.
    """
    captured, f = _forward_captured(model, layer or model.saliency_layer, images, False,
                                    feature_fn or model.retrieval.combine)
    return _maps(batch_confidence(f, pids, detach_weight), captured)
