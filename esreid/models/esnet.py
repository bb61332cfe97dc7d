"""ES-Net (Shen et al., IEEE TIP 2021): All Information Branch (AIB) + Erasing Salient Branch (ESB), docs/methods.md §1.

    images I ─ shared stages (stem .. ``shared_until``) ─┬─ AIB stages ─ GAP ─ BNNeck ─ CE + triplet     (on I)
                                                         └─ ESB stages ─ P-pooling ─ BNNeck ─ CE + triplet (on I*)
    I* = BESM(I, CG-RAM of the ESB's res_conv5 (= its ``layer4`` output) with the batch's easiest positives)

One training step (docs/methods.md §1.4, "per-iteration procedure"):
    1. AIB pass on I; keep the shared-trunk output ``t``.
    2. Saliency pass, no parameter gradients, ESB in eval mode (no running-statistic updates, §7 #5):
       ``A = esb.stages(t)`` without a graph (``shared_until=layer4``: A *is* the AIB pass's layer4 output, reused),
       then ``f = BNNeck(pool(A))`` on the leaf ``A``, eq. 5 on ``f``, one ``autograd.grad`` to ``A`` -> maps M.
    3. BESM (Algorithm 1) -> I*; ESB pass on I* (the shared trunk runs again: it is a different image).
    4. Loss eq. 1 = the sum of the returned terms.
Variants are configs of the same model: ``aib: false`` = ESB alone (Table II); ``esb_pooling: gap`` +
``loss.triplet_weight: 0`` = Base+BESM (Table III); ``aib_pooling: ppool`` = Table VI; Base+BESM with
``saliency: gradcam`` = Base+Grad-CAM Erasing (Table V: step 2 takes Grad-CAM of the true-ID logit instead of CG-RAM).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from esreid.config import ERASE_VALUE_NAMES, POOLING_NAMES, DataConfig, Invalid, ModelConfig, param
from esreid.erasing.besm import besm, erase_fill
from esreid.erasing.cgram import batch_confidence, eval_mode, salient_map
from esreid.erasing.gradcam import grad_cam, true_class_score
from esreid.losses import branch_losses
from esreid.models import MODELS
from esreid.models.backbones import STAGES, build_backbone
from esreid.models.base import ReIDModel, RetrievalRule
from esreid.models.heads import BNNeckHead, Head, HeadOutput, classifier_logits
from esreid.models.pooling import build_pooling


def cgram_saliency(head: Head, a: Tensor, pids: Tensor, cfg: ESNetConfig) -> Tensor:
    """CG-RAM maps (B, h, w) of ``a`` (B, C, h, w), a leaf requiring grad, through the ESB ``head`` (eqs. 3-5)."""
    f = head(a).feature  # the ESB retrieval vector (post-BN, docs/methods.md §7 #3)
    score = batch_confidence(f, pids, cfg.detach_confidence_weight)  # eq. 5
    return salient_map(score, a)  # eqs. 3-4


def gradcam_saliency(head: Head, a: Tensor, pids: Tensor, cfg: ESNetConfig) -> Tensor:
    """Grad-CAM maps (B, h, w) of the ground-truth-class logit w.r.t. ``a`` (B, C, h, w) (Table V "Base+Grad-CAM
    Erasing", docs/methods.md §7 #12: "by cross-entropy loss" read as the CE-trained classifier's true-ID logit).

    The head is in eval mode here, so its BNNeck uses running statistics and each sample's map depends on its own
    logit only (standard per-image Grad-CAM; the train-mode batch coupling of PMM's guidance does not arise).
    """
    logits = classifier_logits(head, head(a))  # (B, N), the same bias-free classifier the CE loss trains
    return grad_cam(true_class_score(logits, pids), a, retain_graph=False)


SALIENCY = {"cgram": cgram_saliency, "gradcam": gradcam_saliency}  # model.saliency -> map of the ESB's res_conv5


@dataclass
class ESNetConfig(ModelConfig):
    name: str = "esnet"
    # last shared stage: layer2 = "before res_conv4" read literally (docs/methods.md §7 #1)
    shared_until: str = param("layer2", choices=STAGES[2:])
    aib: bool = True  # build the All Information Branch
    esb: bool = True  # build the Erasing Salient Branch
    aib_pooling: str = param("gap", choices=POOLING_NAMES)  # §III-A; "ppool" = Table VI
    esb_pooling: str = param("ppool", choices=POOLING_NAMES)  # §III-D; "gap" / "gmp" = Tables III / IV
    ppool_init: float = param(3.0, gt=1)  # initial exponent of a learnable pooling (not in the paper; §7 #7)
    erase_ratio: float = param(0.2, ge=0, le=1)  # R of Algorithm 1 (Table I = Table II AIB+ESB(R20,P0.5))
    erase_prob: float = param(0.5, ge=0, le=1)  # P of Algorithm 1
    # "set to 0" (§III-C-2, pixels "of the raw images"): black = a raw 0 (-mean/std after normalisation) or mean = 0 on
    # the normalised tensor (docs/methods.md §7 #6)
    erase_value: str = param("black", choices=ERASE_VALUE_NAMES)
    detach_confidence_weight: bool = False  # eq. 5 literal (False) or exp(S) as a constant weight (§7 #4)
    saliency: str = param("cgram", choices=lambda: list(SALIENCY))  # cgram (§III-C) | gradcam (Table V)

    def check(self, cfg) -> None:
        super().check(cfg)
        if not (self.aib or self.esb):
            raise Invalid("model.esb", "model.aib and model.esb are both false: enable at least one branch")


class Branch(nn.Module):
    """Branch-specific stages + head: the shared-trunk map ``t`` -> ``A = stages(t)`` (B, C, h, w) (identity when
    the branch owns no stage) -> :class:`~esreid.models.heads.HeadOutput`."""

    def __init__(self, stages: nn.Sequential, head: Head):
        super().__init__()
        self.stages = stages
        self.head = head

    def forward(self, t: Tensor) -> HeadOutput:
        return self.head(self.stages(t))


@MODELS.register("esnet", config=ESNetConfig)
class ESNet(ReIDModel):
    """ES-Net. Train: ``forward_train(images (B, 3, H, W) normalised, pids (B,))`` -> ``{aib_ce, aib_triplet, esb_ce,
    esb_triplet}`` (eq. 1; zero-weight terms left out). Eval: ``features(images)`` -> ``[f_aib (B, C), f_esb (B, C)]``
    post-BN (flip-summed, L2-normalised per branch and concatenated by the retrieval rule, docs/methods.md §1.7)."""

    def __init__(self, cfg: ESNetConfig, num_classes: int, retrieval: Optional[RetrievalRule] = None):
        super().__init__(cfg, num_classes, retrieval)
        backbone = build_backbone(cfg.backbone, cfg.last_stride, cfg.pretrained)
        self.shared = backbone.stages("stem", cfg.shared_until)
        own = STAGES[STAGES.index(cfg.shared_until) + 1 :]
        dim = backbone.out_channels

        def branch(pooling: str, copy_stages: bool) -> Branch:
            # Both branches' own stages start from the same (ImageNet) weights (docs/methods.md §1.1 reading A).
            stages = backbone.stages(own[0], own[-1]) if own else nn.Sequential()
            stages = copy.deepcopy(stages) if copy_stages else stages
            return Branch(stages, BNNeckHead(build_pooling(pooling, cfg.ppool_init), dim, num_classes))

        self.aib = branch(cfg.aib_pooling, False) if cfg.aib else None
        self.esb = branch(cfg.esb_pooling, cfg.aib) if cfg.esb else None
        # CG-RAM layer L = the ESB's res_conv5 (its layer4 output; the AIB's without an ESB)
        self.saliency_layer = f"{'esb' if cfg.esb else 'aib'}.stages.layer4" if own else "shared.layer4"
        self.generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))  # BESM coin flips
        self.register_buffer("erase_fill", torch.zeros(3), persistent=False)  # (3,) what BESM writes
        data = DataConfig()  # ImageNet statistics until the trainer tells the data's (set_input_normalization)
        self.set_input_normalization(data.mean, data.std)
        self._last: Dict[str, Tensor] = {}

    def branches(self) -> Dict[str, Branch]:
        return {name: b for name, b in (("aib", self.aib), ("esb", self.esb)) if b is not None}

    # ------------------------------------------------------------------------------------------------------------
    def forward_features(self, images: Tensor) -> Tensor:
        return self.shared(images)  # t (B, C_shared, h', w')

    def forward_head(self, t: Tensor) -> List[HeadOutput]:
        return [b(t) for b in self.branches().values()]  # AIB first

    def forward_train(self, images: Tensor, pids: Tensor) -> Dict[str, Tensor]:
        terms: Dict[str, Tensor] = {}
        t = a_aib = None
        if self.aib is not None:
            t = self.shared(images)
            a_aib = self.aib.stages(t)
            terms.update(branch_losses(self.aib.head(a_aib), pids, self.cfg.loss, "aib_"))  # eq. 1, AIB terms
        if self.esb is not None:
            maps = self.saliency(images, pids, t, a_aib)
            erased = besm(images, maps, self.cfg.erase_ratio, self.cfg.erase_prob, self.generator, self.erase_fill)
            out = self.esb(self.shared(erased.images))
            terms.update(branch_losses(out, pids, self.cfg.loss, "esb_"))  # eq. 1, ESB terms
            self._last = {"erased_fraction": erased.erased.float().mean(), "saliency_mean": maps.mean(),
                          "empty_map_fraction": erased.empty.float().mean()}
        return terms

    def saliency(
        self, images: Tensor, pids: Tensor, t: Optional[Tensor] = None, a_aib: Optional[Tensor] = None
    ) -> Tensor:
        """Training-time saliency maps (B, h, w) of the ESB's res_conv5: CG-RAM (§III-C-1, eqs. 3-5) or, with
        ``saliency: gradcam``, Grad-CAM of the true-ID logit (:func:`gradcam_saliency`).

        ``t`` / ``a_aib``: the shared-trunk and AIB layer4 outputs of this step's AIB pass (reused, not recomputed).
        Only ``A`` gets a gradient; the ESB (and the shared trunk when ``t`` is not given) runs in eval mode, so no
        BatchNorm statistic changes. The head from ``A`` on runs in float32 with autocast off (it is cheap: pooling,
        BNNeck, eq. 5 or the logit): near the easiest positive S is close to 1 and dS/df is a difference of
        near-equal terms, which bf16 cannot resolve.
        """
        with eval_mode(self.esb if t is not None else self):
            if a_aib is not None and len(self.esb.stages) == 0:
                a = a_aib.detach()  # shared_until=layer4: the ESB's res_conv5 output is the AIB pass's layer4 output
            else:
                with torch.no_grad():
                    a = self.esb.stages(t if t is not None else self.shared(images))
            a = a.float().requires_grad_(True)
            with torch.enable_grad(), torch.autocast(device_type=a.device.type, enabled=False):
                return SALIENCY[self.cfg.saliency](self.esb.head, a, pids, self.cfg)

    # ------------------------------------------------------------------------------------------------------------
    def set_input_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.erase_fill.copy_(erase_fill(self.cfg.erase_value, mean, std))  # docs/methods.md §7 #6

    def heads(self) -> Dict[str, Head]:
        return {name: b.head for name, b in self.branches().items()}

    def generators(self) -> Dict[str, torch.Generator]:
        return {"besm": self.generator}

    def compile_regions(self) -> List[nn.Module]:
        """Shared trunk, each branch's own stages, the heads; the saliency pass (easiest positives, eq. 5's
        ``autograd.grad``) and BESM (top-k, coin flips) run eagerly between them."""
        own = [b.stages for b in self.branches().values() if len(b.stages)]
        return [self.shared, *own, *super().compile_regions()]

    def stats(self) -> Dict[str, float]:
        """P-pooling exponent(s); of the last batch: the fraction erased by BESM, the fraction drawn for erasing whose
        map was all zero (left unchanged), the mean saliency value."""
        return {**{k: float(v) for k, v in self._last.items()}, **super().stats()}
