"""Losses shared by every method: cross-entropy with label smoothing, triplet losses (batch-hard, AGW's weighted
regularisation), AGW's centre loss, and
:func:`branch_losses`, which turns one branch's (logits, feature) into the named, weighted terms of a
``config.LossConfig``.
"""

from esreid.losses.branch import branch_losses
from esreid.losses.center import CenterLoss, center_loss
from esreid.losses.cross_entropy import cross_entropy
from esreid.losses.triplet import TRIPLETS, batch_hard_triplet, pairwise_euclidean, weighted_regularized_triplet

__all__ = ["TRIPLETS", "CenterLoss", "batch_hard_triplet", "branch_losses", "center_loss", "cross_entropy",
           "pairwise_euclidean", "weighted_regularized_triplet"]
