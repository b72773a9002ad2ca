"""Huang et al. 2022 (NeurIPS), "Knowledge Distillation from A Stronger Teacher" (DIST)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from crckd.losses._common import check_pair


def _mean_pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean over rows of the Pearson correlation of a[i] and b[i] (centred cosine similarity)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return F.cosine_similarity(a, b, dim=1, eps=eps).mean()


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """L_DIST = β T² L_inter + γ T² L_intra on Y = softmax(z / T), [B, C] (Huang et al. 2022).

    L_inter = 1 − (1/B) Σ_i ρ(Y_s[i, :], Y_t[i, :]) (per sample, across classes) and
    L_intra = 1 − (1/C) Σ_j ρ(Y_s[:, j], Y_t[:, j]) (per class, across the batch), ρ the
    Pearson correlation. The teacher side is detached.
    """
    check_pair(student_logits, teacher_logits)
    t = temperature
    y_s = F.softmax(student_logits / t, dim=1)
    y_t = F.softmax(teacher_logits.detach() / t, dim=1)
    inter = 1 - _mean_pearson(y_s, y_t)
    intra = 1 - _mean_pearson(y_s.T, y_t.T)
    return (beta * inter + gamma * intra) * (t * t)
