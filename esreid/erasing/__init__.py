"""Salient-region erasing: CG-RAM maps (cgram.py) and the Batch Erasing Salient Method (besm.py) of ES-Net."""

from esreid.erasing.besm import besm, erased_loss_probe, salient_mask
from esreid.erasing.cgram import batch_confidence, cgram_batch, cgram_pair, easiest_positive, salient_map

__all__ = [
    "batch_confidence",
    "besm",
    "cgram_batch",
    "cgram_pair",
    "easiest_positive",
    "erased_loss_probe",
    "salient_map",
    "salient_mask",
]
