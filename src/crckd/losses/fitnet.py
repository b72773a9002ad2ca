"""Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (hint loss)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from crckd.losses._common import check_pair


def fitnet_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """L_HT = mean over all elements of (r(u_s) − u_t)² (Romero et al. 2015).

    ``student_feat`` is the hint already passed through the student's regressor r, so it has the
    teacher hint's shape (checked: no broadcasting). The paper's ½·‖·‖² sum is replaced by the
    elementwise mean, as in every FitNets baseline; the teacher hint is detached.
    """
    check_pair(student_feat, teacher_feat)
    return F.mse_loss(student_feat, teacher_feat.detach(), reduction="mean")
