"""Park et al. 2019, "Relational Knowledge Distillation" (RKD-D and RKD-A)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from crckd.losses._common import check_pair


def _pairwise_distances(emb: Tensor) -> Tensor:
    """‖e_i − e_j‖₂ as [B, B]; the zero diagonal has a zero (not NaN) gradient."""
    return (emb.unsqueeze(1) - emb.unsqueeze(0)).norm(dim=2)


def _normalised_distances(emb: Tensor) -> Tensor:
    """ψ_D = ‖e_i − e_j‖ / μ, μ the mean distance over the B(B−1) off-diagonal pairs."""
    n = emb.shape[0]
    if n < 2:
        raise ValueError(f"RKD distances need a batch of at least 2, got {n}")
    d = _pairwise_distances(emb)
    return d / (d.sum() / (n * (n - 1)))


def _angles(emb: Tensor) -> Tensor:
    """ψ_A[j, i, k] = ⟨(e_i − e_j)/‖·‖, (e_k − e_j)/‖·‖⟩, the cosine at vertex j.

    Degenerate triplets (i = j or k = j) get a zero difference vector, hence cosine 0.
    """
    unit = F.normalize(emb.unsqueeze(0) - emb.unsqueeze(1), p=2, dim=2)
    return unit @ unit.transpose(1, 2)


def rkd_distance_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD-D = mean over the B² pairs of Huber(ψ_D(s), ψ_D(t)), Huber = smooth-L1, δ = 1.

    Inputs are flattened to [B, −1]; B >= 2. The teacher side is detached.
    """
    check_pair(student_emb, teacher_emb, batch_only=True)
    s, t = student_emb.flatten(1), teacher_emb.detach().flatten(1)
    return F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t), reduction="mean")


def rkd_angle_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD-A = mean over the B³ triplets of Huber(ψ_A(s), ψ_A(t)), smooth-L1 with δ = 1.

    Inputs are flattened to [B, −1]. The teacher side is detached.
    """
    check_pair(student_emb, teacher_emb, batch_only=True)
    s, t = student_emb.flatten(1), teacher_emb.detach().flatten(1)
    return F.smooth_l1_loss(_angles(s), _angles(t), reduction="mean")


def rkd_loss(
    student_emb: Tensor,
    teacher_emb: Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> Tensor:
    """L_RKD = λ_D · RKD-D + λ_A · RKD-A; the defaults are the paper's λ_D = 25, λ_A = 50."""
    distance = rkd_distance_loss(student_emb, teacher_emb)
    angle = rkd_angle_loss(student_emb, teacher_emb)
    return distance_weight * distance + angle_weight * angle
