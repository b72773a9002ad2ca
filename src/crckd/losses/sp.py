"""Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation" (SP).

Also home of ``_relation_distance``, shared with SRC-MT's sample relation consistency.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from crckd.losses.kd import _check_pair


def _row_normalised_gram(feat: Tensor) -> Tensor:
    """G̃ = row-L2-normalise(Q Qᵀ) for Q = feat flattened to [B, −1]; shape [B, B]."""
    q = feat.flatten(1)
    return F.normalize(q @ q.T, p=2, dim=1)


def _relation_distance(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """‖G̃_s − G̃_t‖²_F with the teacher side detached; feature shapes may differ but B."""
    _check_pair(student_feat, teacher_feat, batch_only=True)
    diff = _row_normalised_gram(student_feat) - _row_normalised_gram(teacher_feat.detach())
    return diff.pow(2).sum()


def sp_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """L_SP = (1/B²) ‖G̃_t − G̃_s‖²_F, G̃ = row-L2-normalise(Q Qᵀ), Q = feat as [B, −1].

    Feature shapes may differ apart from the batch size. torchdistill's ``SPKDLoss`` calls
    ``normalize(G, 1)``, which sets p = 1 (rows L1-normalised) instead of dim = 1; we follow the
    paper's L2 row normalisation, so the two values differ. The teacher side is detached.
    """
    return _relation_distance(student_feat, teacher_feat) / student_feat.shape[0] ** 2
