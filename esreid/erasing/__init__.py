"""Erasing and mixing of salient regions: ES-Net's CG-RAM maps (cgram.py) and BESM (besm.py), Grad-CAM guidance
(gradcam.py), BDB's Batch DropBlock (dropblock.py) and PMM's Attentive Hard-Mix (hardmix.py)."""

from esreid.erasing.besm import besm, erased_loss_probe, frozen_state, salient_mask
from esreid.erasing.cgram import batch_confidence, cgram_batch, cgram_pair, easiest_positive, salient_map
from esreid.erasing.dropblock import BatchDropBlock
from esreid.erasing.gradcam import grad_cam, true_class_score
from esreid.erasing.hardmix import AttentiveHardMix

__all__ = [
    "AttentiveHardMix",
    "BatchDropBlock",
    "batch_confidence",
    "besm",
    "cgram_batch",
    "cgram_pair",
    "easiest_positive",
    "erased_loss_probe",
    "frozen_state",
    "grad_cam",
    "salient_map",
    "salient_mask",
    "true_class_score",
]
