"""Losses of CRCKD and its baselines, used like ``torch.nn.functional`` (method doc §b)."""

from crckd.losses.contrast import ContrastMemory, ProjectionHead, ccd_loss
from crckd.losses.crckd import (
    class_centroids,
    consistency_kl,
    consistency_mse,
    crp_loss,
    nce_loss,
    sigmoid_rampup,
)

__all__ = [
    "ContrastMemory",
    "ProjectionHead",
    "ccd_loss",
    "class_centroids",
    "consistency_kl",
    "consistency_mse",
    "crp_loss",
    "nce_loss",
    "sigmoid_rampup",
]
