"""Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge
Transfer" (PKT)."""

from __future__ import annotations

import torch
from torch import Tensor

from crckd.losses._common import check_pair


def _conditional_probabilities(emb: Tensor, eps: float) -> Tensor:
    """P[i, j] = K(x_i, x_j) / Σ_k K(x_i, x_k), K = (cos + 1)/2 the cosine-similarity kernel.

    Rows are scaled by 1/(‖x_i‖ + ε) before the dot products, so zero rows do not divide by 0.
    """
    x = emb.flatten(1)
    unit = x / (x.norm(dim=1, keepdim=True) + eps)
    kernel = (unit @ unit.T + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student_emb: Tensor, teacher_emb: Tensor, eps: float = 1e-7) -> Tensor:
    """L_PKT = mean_{i, j} p_ij · log((p_ij + ε) / (q_ij + ε)), p teacher, q student (PKT).

    This is KL(teacher ‖ student) between the conditional distributions of each row, as in the
    authors' code (and torchdistill's ``PKTLoss``): the diagonal i = j is kept and the B² terms
    are averaged (the paper writes a sum). Embedding sizes may differ; the teacher side is
    detached.
    """
    check_pair(student_emb, teacher_emb, batch_only=True)
    p = _conditional_probabilities(teacher_emb.detach(), eps)
    q = _conditional_probabilities(student_emb, eps)
    return torch.mean(p * torch.log((p + eps) / (q + eps)))
