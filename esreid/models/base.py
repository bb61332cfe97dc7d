"""The model contract: :class:`ReIDModel`, the one interface every registered model implements and every consumer
(trainer, evaluator, CG-RAM explanations, export, checkpoints) uses. Consumers never look at a model's attributes.

A method registers ``@MODELS.register(name, config=XConfig)`` on a subclass built as ``X(cfg, num_classes,
retrieval)``; ``XConfig`` (a :class:`~esreid.config.ModelConfig`) checks its own values when the config is loaded.

=========================================  ==========================================================================
member                                     meaning
=========================================  ==========================================================================
``forward_features(images) -> Tensor``     the shared trunk: images ``(B, 3, H, W)`` -> map ``(B, C, h, w)``
``forward_head(x) -> list[HeadOutput]``    every branch from the trunk map on (eval / inference path)
``forward_train(images, pids) -> dict``    scalar loss terms ``{name: Tensor}``; the trainer back-propagates the sum
``features(images) -> list[Tensor]``       per-branch retrieval features ``[(B, D_i)]`` (eval mode, no flip)
``retrieval`` (:class:`RetrievalRule`)     flip, per-branch L2, metric: how features become the ranked distance
``branch_features(images, flip)``          per-branch features, flip-summed (in >= float32) by the rule
``retrieval_features(images) -> Tensor``   the vector ``(B, ΣD_i)`` the evaluator ranks, by the retrieval rule
``saliency_layer``                         module name of the default CG-RAM layer (explanations, Fig. 3 probe)
``generators() -> dict``                   the model's own RNGs (saved in checkpoints, seeded alike under DDP)
``no_weight_decay() -> set``               parameter names excluded from weight decay
``stats() -> dict``                        values to log once per epoch (pooling exponent, erased fraction, ...)
``compile_regions() -> list[Module]``      the heavy, static submodules ``solver.compile`` compiles one by one
``num_classes``                            training identities the classifiers were built for (saved in checkpoints)
``set_input_normalization(mean, std)``     told by the trainer: how its images were normalised (BESM's black fill)
=========================================  ==========================================================================

``model(images, pids)`` in train mode is ``forward_train`` (what DDP wraps); ``model(images)`` in eval mode is
``features``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Set

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esreid.evaluation.distance import METRICS
from esreid.models.heads import Head, HeadOutput


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32, or float64 when it already is (half-precision autocast outputs are promoted)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@dataclass(frozen=True)
class RetrievalRule:
    """How a model's per-branch features become the ranked vector, and how two vectors are compared.

    flip: each branch's feature is the sum over the image and its horizontal mirror (ES-Net §IV-A-2);
    normalize: each branch is L2-normalised before concatenation (docs/methods.md §1.7);
    metric: ``cosine`` (1 - cos) or ``euclidean`` (squared) distance between the concatenated vectors.
    """

    flip: bool = True
    normalize: bool = True
    metric: str = "cosine"

    def combine(self, branches: Sequence[Tensor]) -> Tensor:
        """Per-branch features ``[(B, D_i)]`` -> ``(B, ΣD_i)``, at least float32 (half precision is promoted):
        L2-normalised per branch (when ``normalize``) and concatenated."""
        branches = [at_least_float32(b) for b in branches]
        if self.normalize:
            branches = [F.normalize(b, dim=1) for b in branches]
        return torch.cat(branches, dim=1)

    def similarity(self, q: Tensor, g: Tensor) -> Tensor:
        """Row-wise similarity ``(B,)`` of vectors ``q``, ``g`` ``(B, D)``: minus the distance the evaluator ranks by
        (cosine: ``cos(q, g) - 1``, eq. 2 up to a constant; euclidean: ``-||q - g||^2``). Differentiable."""
        m = METRICS.get(self.metric)
        return -m.paired(m.prepare(at_least_float32(q)), m.prepare(at_least_float32(g)))

    def replace(self, **changes: Any) -> RetrievalRule:
        """A copy with the given fields changed; ``None`` values keep the current ones."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


class ReIDModel(nn.Module):
    """Base class of every registered model (module docstring). Subclasses implement ``forward_features``,
    ``forward_head``, ``forward_train`` and list their heads in ``heads()``; the rest has defaults."""

    default_retrieval: ClassVar[RetrievalRule] = RetrievalRule()
    saliency_layer: str = "backbone.layer4"

    def __init__(self, cfg: Any, num_classes: int, retrieval: Optional[RetrievalRule] = None):
        super().__init__()
        self.cfg = cfg
        self.num_classes = int(num_classes)
        self.retrieval = retrieval if retrieval is not None else self.default_retrieval

    # --- computation ----------------------------------------------------------------------------------------------
    def forward_features(self, images: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` normalised -> the trunk map ``(B, C, h, w)`` every branch starts from."""
        raise NotImplementedError

    def forward_head(self, x: Tensor) -> List[HeadOutput]:
        """The trunk map -> one :class:`HeadOutput` per branch (retrieval features in ``.feature``)."""
        raise NotImplementedError

    def forward_train(self, images: Tensor, pids: Tensor) -> Dict[str, Tensor]:
        """One training forward: images ``(B, 3, H, W)``, identities ``(B,)`` in ``[0, num_classes)`` -> loss terms."""
        raise NotImplementedError

    def features(self, images: Tensor) -> List[Tensor]:
        """Per-branch retrieval features ``[(B, D_i)]`` of images ``(B, 3, H, W)`` (no flip, no normalisation).

        Not wrapped in ``no_grad``: test-time CG-RAM differentiates through it (the evaluator runs it under no_grad).
        """
        return [out.feature for out in self.forward_head(self.forward_features(images))]

    def branch_features(self, images: Tensor, flip: Optional[bool] = None) -> List[Tensor]:
        """:meth:`features` of images ``(B, 3, H, W)``, each branch summed with that of the mirrored images when
        ``flip`` (default ``retrieval.flip``; the sum in at least float32: half-precision autocast outputs are promoted
        first). What the evaluator ranks and test-time CG-RAM explains."""
        branches = self.features(images)
        if self.retrieval.flip if flip is None else flip:
            mirrored = self.features(torch.flip(images, dims=[3]))
            branches = [at_least_float32(b) + at_least_float32(m) for b, m in zip(branches, mirrored)]
        return branches

    def retrieval_features(self, images: Tensor) -> Tensor:
        """The vector the evaluator ranks, ``(B, ΣD_i)`` float32: :meth:`branch_features` combined by the retrieval
        rule."""
        return self.retrieval.combine(self.branch_features(images))

    def forward(self, images: Tensor, pids: Optional[Tensor] = None):
        if not self.training:
            return self.features(images)
        if pids is None:
            raise ValueError(f"{type(self).__name__} in train mode needs pids: model(images, pids), or model.eval()")
        return self.forward_train(images, pids)

    def set_input_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The per-channel normalisation ``(x / 255 - mean) / std`` of the images this model trains on (``data.mean``,
        ``data.std``), told by the trainer once the model is built; a model that writes pixel values into its inputs
        (ES-Net's BESM with ``erase_value: black``) needs it. Nothing by default."""

    # --- declarations ---------------------------------------------------------------------------------------------
    def heads(self) -> Dict[str, Head]:
        """The branches' heads by branch name (used for weight-decay exclusions and logged statistics)."""
        return {}

    def generators(self) -> Dict[str, torch.Generator]:
        """The model's own RNGs by name (BESM coin flips, DropBlock regions, mixing partners)."""
        return {}

    def no_weight_decay(self) -> Set[str]:
        """Parameter names excluded from weight decay: by default those the heads declare (pooling exponents)."""
        path = {module: name for name, module in self.named_modules()}
        return {f"{path[head]}.{n}" for head in self.heads().values() for n in head.no_weight_decay()}

    def stats(self) -> Dict[str, float]:
        """Values to log once per epoch: by default each head's statistics as ``<branch>_<name>``."""
        return {f"{branch}_{k}": v for branch, head in self.heads().items() for k, v in head.stats().items()}

    def compile_regions(self) -> List[nn.Module]:
        """The submodules ``solver.compile`` compiles, each on its own (:func:`esreid.engine.compile.compile_model`):
        the heavy, static parts (trunk stages, heads). Whatever runs between them stays eager: data-dependent choices
        (easiest positives, top-k), ``autograd.grad`` to a layer, RNG draws. A region is called with tensors and
        returns tensors (or a :class:`HeadOutput`); it draws no random numbers, reads no values back to Python and
        calls no ``autograd.grad``; regions do not nest. Default: the heads; models add their trunk stages."""
        return list(self.heads().values())


def infer_num_classes(build: Any, weights: Dict[str, Tensor]) -> int:
    """Number of classes of ``weights`` written without it (esreid 0.1 checkpoints, bare state dicts).

    ``build(n)`` builds the model for ``n`` classes; the tensors whose first dimension follows ``n`` (built for 1 and
    for 2 classes) are the classifiers', and the file's first dimension there is the answer. Raises ``ValueError``
    when the file's classifiers disagree or do not fit."""
    one, two = build(1).state_dict(), build(2).state_dict()
    keys = [k for k in one if one[k].dim() >= 1 and one[k].shape[0] == 1 and two[k].shape[0] == 2]
    sizes = {int(weights[k].shape[0]) for k in keys if k in weights and weights[k].shape[1:] == one[k].shape[1:]}
    if len(sizes) != 1:
        raise ValueError(f"cannot tell the number of classes from the classifier weights {keys[:4]} (sizes found: "
                         f"{sorted(sizes)}); is this a checkpoint of this model?")
    return sizes.pop()
