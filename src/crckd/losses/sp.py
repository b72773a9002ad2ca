"""Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation" (SP)."""

from __future__ import annotations

from torch import Tensor

from crckd.losses._common import relation_distance


def sp_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """L_SP = (1/B²) ‖G̃_t − G̃_s‖²_F, G̃ = row-L2-normalise(Q Qᵀ), Q = feat as [B, −1].

    Feature shapes may differ apart from the batch size. torchdistill's ``SPKDLoss`` calls
    ``normalize(G, 1)``, which sets p = 1 (rows L1-normalised) instead of dim = 1; we follow the
    paper's L2 row normalisation, so the two values differ. The teacher side is detached.
    """
    return relation_distance(student_feat, teacher_feat) / student_feat.shape[0] ** 2
