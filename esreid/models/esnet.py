"""ES-Net (Shen et al., IEEE TIP 2021): All Information Branch (AIB) + Erasing Salient Branch (ESB) (spec §1).

    images I ─ shared stages (stem .. ``shared_until``) ─┬─ AIB stages ─ GAP ─ BNNeck ─ CE + triplet     (on I)
                                                         └─ ESB stages ─ P-pooling ─ BNNeck ─ CE + triplet (on I*)
    I* = BESM(I, CG-RAM of the ESB's res_conv5 (= its ``layer4`` output) with the batch's easiest positives)

One training step (spec §1.4 "recommended per-iteration procedure"):
    1. AIB pass on I; keep the shared-trunk output ``t``.
    2. Saliency pass, no parameter gradients, ESB in eval mode (no running-statistic updates, spec §7 #5):
       ``A = esb_layers(t)`` without a graph (``shared_until=layer4``: A *is* the AIB pass's layer4 output, reused),
       then ``f = BNNeck(pool(A))`` on the leaf ``A``, eq. 5 on ``f``, one ``autograd.grad`` to ``A`` -> maps M.
    3. BESM (Algorithm 1) -> I*; ESB pass on I* (the shared trunk runs again: it is a different image).
    4. Loss eq. 1 = the sum of the returned terms.
Variants are configs of the same model: ``aib: false`` = ESB alone (Table II); ``esb_pooling: gap`` +
``loss.triplet_weight: 0`` = Base+BESM (Table III); ``aib_pooling: ppool`` = Table VI; Base+BESM with
``saliency: gradcam`` = Base+Grad-CAM Erasing (Table V: step 2 takes Grad-CAM of the true-ID logit instead of CG-RAM).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

import torch
from torch import Tensor, nn

from esreid.config import ModelConfig
from esreid.erasing.besm import besm
from esreid.erasing.cgram import batch_confidence, eval_mode, salient_map
from esreid.erasing.gradcam import grad_cam, true_class_score
from esreid.losses import branch_losses
from esreid.models import MODELS
from esreid.models.backbones import build_backbone
from esreid.models.neck import BNNeck
from esreid.models.pooling import pooling_for

STAGES = ("layer1", "layer2", "layer3", "layer4")


@dataclass
class ESNetConfig(ModelConfig):
    name: str = "esnet"
    shared_until: str = "layer2"  # last shared stage: layer2 = "before res_conv4" read literally (spec §7 #1)
    aib: bool = True  # build the All Information Branch
    esb: bool = True  # build the Erasing Salient Branch
    aib_pooling: str = "gap"  # §III-A; "ppool" = Table VI
    esb_pooling: str = "ppool"  # §III-D; "gap" / "gmp" = Tables III / IV
    ppool_init: float = 3.0  # initial exponent of a learnable pooling (not stated in the paper; spec §7 #7)
    erase_ratio: float = 0.2  # R of Algorithm 1 (Table I = Table II AIB+ESB(R20,P0.5))
    erase_prob: float = 0.5  # P of Algorithm 1
    detach_confidence_weight: bool = False  # eq. 5 literal (False) or exp(S) as a constant weight (spec §7 #4)
    saliency: str = "cgram"  # map BESM erases by: cgram (§III-C) | gradcam (Table V "Base+Grad-CAM Erasing")


class Branch(nn.Module):
    """Branch-specific stages + global pooling + BNNeck.

    ``layers(t)``: shared-trunk map -> A (B, C, h, w) (identity when the branch owns no stage);
    ``head(A)`` -> ``(f_t (B, C) pre-BN, f_i (B, C) post-BN, logits (B, N) or None in eval mode)``.
    """

    def __init__(self, layers: nn.Sequential, pooling: nn.Module, dim: int, num_classes: int):
        super().__init__()
        self.layers = layers
        self.pool = pooling
        self.neck = BNNeck(dim, num_classes)

    def head(self, a: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        f_t = self.pool(a)
        f_i, logits = self.neck(f_t)
        return f_t, f_i, logits


def cgram_saliency(branch: Branch, a: Tensor, pids: Tensor, cfg: ESNetConfig) -> Tensor:
    """CG-RAM maps (B, h, w) of ``a`` (B, C, h, w), a leaf requiring grad, through ``branch``'s head (eqs. 3-5)."""
    _, f_i, _ = branch.head(a)  # the ESB retrieval vector (post-BN, spec §7 #3)
    score = batch_confidence(f_i, pids, cfg.detach_confidence_weight)  # eq. 5
    return salient_map(score, a)  # eqs. 3-4


def gradcam_saliency(branch: Branch, a: Tensor, pids: Tensor, cfg: ESNetConfig) -> Tensor:
    """Grad-CAM maps (B, h, w) of the ground-truth-class logit w.r.t. ``a`` (B, C, h, w) (Table V "Base+Grad-CAM
    Erasing", spec §7 #12: "by cross-entropy loss" read as the CE-trained classifier's true-ID logit).

    The branch is in eval mode here, so its BNNeck uses running statistics and each sample's map depends on its own
    logit only (standard per-image Grad-CAM; the train-mode batch coupling of PMM's guidance does not arise).
    """
    _, f_i, _ = branch.head(a)  # eval mode: the BNNeck returns no logits, so its classifier is applied here
    logits = branch.neck.classifier(f_i)  # (B, N), the same bias-free classifier the CE loss trains
    return grad_cam(true_class_score(logits, pids), a, retain_graph=False)


SALIENCY = {"cgram": cgram_saliency, "gradcam": gradcam_saliency}  # model.saliency -> map of the ESB's res_conv5


@MODELS.register("esnet", config=ESNetConfig)
class ESNet(nn.Module):
    """ES-Net. Train: ``model(images (B, 3, H, W) normalised, pids (B,))`` -> ``{aib_ce, aib_triplet, esb_ce,
    esb_triplet}`` (eq. 1; zero-weight terms left out). Eval: ``model(images)`` -> ``[f_aib (B, C), f_esb (B, C)]``
    post-BN (the evaluator flip-sums, L2-normalises per branch and concatenates, spec §1.7)."""

    def __init__(self, cfg: ESNetConfig, num_classes: int):
        super().__init__()
        if cfg.shared_until not in STAGES[1:]:
            raise ValueError(f"model.shared_until: expected one of {STAGES[1:]}, got {cfg.shared_until!r}")
        if not (cfg.aib or cfg.esb):
            raise ValueError("model.aib / model.esb: at least one branch must be enabled")
        if cfg.saliency not in SALIENCY:
            raise ValueError(f"model.saliency: expected one of {sorted(SALIENCY)}, got {cfg.saliency!r}")
        for key in ("erase_ratio", "erase_prob"):
            if not 0.0 <= getattr(cfg, key) <= 1.0:
                raise ValueError(f"model.{key}: expected a value in [0, 1], got {getattr(cfg, key)!r}")
        self.cfg = cfg
        backbone = build_backbone(cfg.backbone, cfg.last_stride, cfg.pretrained)
        split = STAGES.index(cfg.shared_until) + 1
        shared = ["conv1", "bn1", "relu", "maxpool", *STAGES[:split]]
        own = STAGES[split:]
        self.shared = nn.Sequential(OrderedDict((n, getattr(backbone, n)) for n in shared))
        dim = backbone.out_channels

        def branch(pooling: str, key: str, copy_stages: bool) -> Branch:
            # Both branches' own stages start from the same (ImageNet) weights (spec §1.1 reading A).
            stages = [(n, copy.deepcopy(getattr(backbone, n)) if copy_stages else getattr(backbone, n)) for n in own]
            pool = pooling_for(pooling, cfg.ppool_init, key)
            return Branch(nn.Sequential(OrderedDict(stages)), pool, dim, num_classes)

        self.aib = branch(cfg.aib_pooling, "model.aib_pooling", False) if cfg.aib else None
        self.esb = branch(cfg.esb_pooling, "model.esb_pooling", cfg.aib) if cfg.esb else None
        # The CG-RAM layer L = the ESB's res_conv5 (its layer4 output; the AIB's without an ESB), by module name
        # (used by the visualiser).
        self.cgram_layer = f"{'esb' if cfg.esb else 'aib'}.layers.layer4" if own else "shared.layer4"
        self.generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))  # BESM coin flips
        self._last: Dict[str, Tensor] = {}

    # ------------------------------------------------------------------------------------------------------------
    def forward(self, images: Tensor, pids: Optional[Tensor] = None):
        if not self.training:
            return self.features(images)
        if pids is None:
            raise ValueError("ESNet: training forward needs pids (model(images, pids))")
        terms: Dict[str, Tensor] = {}
        t = a_aib = None
        if self.aib is not None:
            t = self.shared(images)
            a_aib = self.aib.layers(t)
            f_t, _, logits = self.aib.head(a_aib)
            terms.update(branch_losses(logits, f_t, pids, self.cfg.loss, "aib_"))  # eq. 1, AIB terms
        if self.esb is not None:
            maps = self.saliency(images, pids, t, a_aib)
            erased, chosen = besm(images, maps, self.cfg.erase_ratio, self.cfg.erase_prob, self.generator)
            f_t, _, logits = self.esb.head(self.esb.layers(self.shared(erased)))
            terms.update(branch_losses(logits, f_t, pids, self.cfg.loss, "esb_"))  # eq. 1, ESB terms
            self._last = {"erased_fraction": chosen.float().mean(), "saliency_mean": maps.mean()}
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
            if a_aib is not None and len(self.esb.layers) == 0:
                a = a_aib.detach()  # shared_until=layer4: the ESB's res_conv5 output is the AIB pass's layer4 output
            else:
                with torch.no_grad():
                    a = self.esb.layers(t if t is not None else self.shared(images))
            a = a.float().requires_grad_(True)
            with torch.enable_grad(), torch.autocast(device_type=a.device.type, enabled=False):
                return SALIENCY[self.cfg.saliency](self.esb, a, pids, self.cfg)

    def features(self, images: Tensor) -> List[Tensor]:
        """Eval features: ``[f_i of each enabled branch]``, each (B, C) post-BN, AIB first. Not wrapped in no_grad:
        the test-time CG-RAM differentiates through it (the evaluator runs it under no_grad)."""
        t = self.shared(images)
        return [b.head(b.layers(t))[1] for b in (self.aib, self.esb) if b is not None]

    # ------------------------------------------------------------------------------------------------------------
    def no_weight_decay(self) -> Set[str]:
        """Learnable pooling exponents (P-pooling l) are excluded from weight decay (spec §1.5)."""
        names: Set[str] = set()
        for key in ("aib", "esb"):
            pool = getattr(getattr(self, key), "pool", None)
            if hasattr(pool, "no_weight_decay"):
                names |= {f"{key}.pool.{n}" for n in pool.no_weight_decay()}
        return names

    def stats(self) -> Dict[str, float]:
        """P-pooling exponent(s), fraction of the last batch erased by BESM, mean CG-RAM value of the last batch."""
        out = {k: float(v) for k, v in self._last.items()}
        for key in ("aib", "esb"):
            pool = getattr(getattr(self, key), "pool", None)
            if hasattr(pool, "stats"):
                out.update({f"{key}_{k}": v for k, v in pool.stats().items()})
        return out
