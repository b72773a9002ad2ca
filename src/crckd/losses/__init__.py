"""Losses of CRCKD and its baselines, used like ``torch.nn.functional`` (method doc §b).

One module per paper: kd (Hinton), fitnet (FitNets), at (attention transfer), sp (similarity
preserving), rkd (relational KD), pkt (probabilistic KT), cc (correlation congruence), vid
(variational information distillation, a module since it has parameters), dkd (decoupled KD),
dist (DIST) and src_relation (SRC-MT's sample relation consistency).

CRD (Tian et al. 2020) has no function of its own: it is :func:`nce_loss` with one positive
(P = 1), i.e. :func:`ccd_loss` with ``num_positives=1`` on the scores of
:class:`ContrastMemory`, with the positive drawn in the "exact" (the anchor itself) or "relax"
(a random member of its class) sampling mode.
"""

from crckd.losses.at import at_loss, attention_map
from crckd.losses.cc import cc_loss
from crckd.losses.contrast import ContrastMemory, ProjectionHead, ccd_loss
from crckd.losses.crckd import (
    class_centroids,
    consistency_kl,
    consistency_mse,
    crp_loss,
    nce_loss,
    sigmoid_rampup,
)
from crckd.losses.dist import dist_loss
from crckd.losses.dkd import dkd_loss
from crckd.losses.fitnet import fitnet_loss
from crckd.losses.kd import kd_loss
from crckd.losses.pkt import pkt_loss
from crckd.losses.rkd import rkd_angle_loss, rkd_distance_loss, rkd_loss
from crckd.losses.sp import sp_loss
from crckd.losses.src_relation import src_loss
from crckd.losses.vid import VIDLoss

__all__ = [
    "ContrastMemory",
    "ProjectionHead",
    "VIDLoss",
    "at_loss",
    "attention_map",
    "cc_loss",
    "ccd_loss",
    "class_centroids",
    "consistency_kl",
    "consistency_mse",
    "crp_loss",
    "dist_loss",
    "dkd_loss",
    "fitnet_loss",
    "kd_loss",
    "nce_loss",
    "pkt_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "sigmoid_rampup",
    "sp_loss",
    "src_loss",
]
