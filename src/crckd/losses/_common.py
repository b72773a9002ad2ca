"""Helpers shared by several losses: shape checks, batch KL, relation matrices, spatial pooling."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def check_pair(student: Tensor, teacher: Tensor, *, batch_only: bool = False) -> None:
    """Raise ValueError unless the shapes match (only the batch dimension if ``batch_only``).

    Broadcasting would otherwise turn e.g. a [B, C] vs [1, C] mistake into a silent wrong loss.
    """
    same = student.shape[:1] == teacher.shape[:1] if batch_only else student.shape == teacher.shape
    if not same:
        what = "batch sizes" if batch_only else "shapes"
        raise ValueError(
            f"student and teacher {what} differ: {tuple(student.shape)} vs {tuple(teacher.shape)}"
        )


def batch_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean over rows of KL(softmax(teacher) || softmax(student)); the teacher side is detached."""
    log_p_s = F.log_softmax(student_logits, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach(), dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True)
    return kl / student_logits.shape[0]


def _row_normalised_gram(feat: Tensor) -> Tensor:
    """G̃ = row-L2-normalise(Q Qᵀ) for Q = feat flattened to [B, −1]; shape [B, B]."""
    q = feat.flatten(1)
    return F.normalize(q @ q.T, p=2, dim=1)


def relation_distance(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """‖G̃_s − G̃_t‖²_F (SP's relation matrices, also SRC-MT's) with the teacher side detached.

    Feature shapes may differ apart from the batch size.
    """
    check_pair(student_feat, teacher_feat, batch_only=True)
    diff = _row_normalised_gram(student_feat) - _row_normalised_gram(teacher_feat.detach())
    return diff.pow(2).sum()


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool whichever of two [B, C, H, W] maps is larger to their common size.

    The common size is (min H, min W); a map already at that size is returned unchanged.
    """
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError(f"expected [B, C, H, W] maps, got {tuple(a.shape)} and {tuple(b.shape)}")
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    a = a if a.shape[2:] == size else F.adaptive_avg_pool2d(a, size)
    b = b if b.shape[2:] == size else F.adaptive_avg_pool2d(b, size)
    return a, b
