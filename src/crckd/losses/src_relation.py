"""Liu et al. 2020 (IEEE TMI), "Semi-supervised Medical Image Classification with
Relation-driven Self-ensembling Model" (SRC-MT): sample relation consistency."""

from __future__ import annotations

from torch import Tensor

from crckd.losses._common import relation_distance


def src_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """L_SRC = (1/B) ‖R_s − R_t‖²_F, R = row-L2-normalise(A Aᵀ), A = activations as [B, −1].

    R is SP's relation matrix (:func:`crckd.losses.sp.sp_loss`), but SRC-MT divides the summed
    squared difference by B, not B²: the paper's L_src = Σ (1/B) ‖R − R'‖²₂, and the authors'
    code (sum of the elementwise squares / batch size). So L_SRC = B · L_SP, and the published
    SRC weights apply unchanged. The teacher (EMA) side is detached.
    """
    return relation_distance(student_feat, teacher_feat) / student_feat.shape[0]
