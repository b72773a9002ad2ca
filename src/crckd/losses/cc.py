"""Peng et al. 2019, "Correlation Congruence for Knowledge Distillation" (CC)."""

from __future__ import annotations

import math

from torch import Tensor

from crckd.losses._common import check_pair


def _taylor_rbf_correlation(emb: Tensor, gamma: float, order: int) -> Tensor:
    """ψ[i, j] = e^{−2γ} Σ_{p=0}^{P} (2γ)^p / p! · (f_iᵀ f_j)^p, shape [B, B].

    The order-P Taylor expansion of the Gaussian RBF exp(−γ‖f_i − f_j‖²) for unit-norm f
    (then ‖f_i − f_j‖² = 2 − 2 f_iᵀ f_j); it tends to the RBF kernel as P grows.
    """
    f = emb.flatten(1)
    gram = f @ f.T
    series = sum((2 * gamma) ** p / math.factorial(p) * gram.pow(p) for p in range(order + 1))
    return math.exp(-2 * gamma) * series


def cc_loss(student_emb: Tensor, teacher_emb: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """L_CC = (1/B²) ‖ψ(F_t) − ψ(F_s)‖²_F with ψ the Taylor-expanded Gaussian RBF kernel (CC).

    Embeddings are used as given (flattened to [B, −1]): the expansion matches the RBF kernel
    only for L2-normalised embeddings, so normalise them first if that is wanted. torchdistill's
    ``CCKDLoss`` returns ‖·‖_F / B² (``torch.dist``, not squared); we follow the paper's squared
    norm. Embedding sizes may differ; the teacher side is detached.
    """
    check_pair(student_emb, teacher_emb, batch_only=True)
    diff = _taylor_rbf_correlation(student_emb, gamma, order) - _taylor_rbf_correlation(
        teacher_emb.detach(), gamma, order
    )
    return diff.pow(2).sum() / student_emb.shape[0] ** 2
