"""Functional losses of CRCKD and mean teacher (method doc §b, values in §c).

Every function is pure: no state, no parameters. Teacher-side inputs are detached inside each
loss, so callers cannot accidentally send gradient into the EMA teacher or the memory banks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from crckd.losses._common import batch_kl


def consistency_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean-teacher consistency L_KL = (1/B) Σ_i KL(softmax(z_t,i) ‖ softmax(z_s,i)) (§b).

    B is the actual batch size; the reference divides by the nominal 64 even for a smaller last
    batch, a bug we do not reproduce (§f.13). Gradient reaches the student logits only.
    """
    return batch_kl(student_logits, teacher_logits)


def consistency_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean-teacher's MSE option: mean over batch and classes of (softmax(z_s) - softmax(z_t))².

    The teacher side is detached, as for :func:`consistency_kl`.
    """
    p_s = F.softmax(student_logits, dim=1)
    p_t = F.softmax(teacher_logits.detach(), dim=1)
    return F.mse_loss(p_s, p_t, reduction="mean")


def sigmoid_rampup(current: float, length: float) -> float:
    """Consistency weight ramp exp(-5 (1 - clip(current/length, 0, 1))²) (§b, schedule).

    ``length <= 0`` means no ramp (weight 1).
    """
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(current / length, 0.0), 1.0)
    return math.exp(-5.0 * phase * phase)


def class_centroids(memory: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """CRP anchors c_k = normalize(mean_{j: y_j = k} ReLU(M_j)), shape [C, D] (§b CRP, §f.7).

    The ReLU before averaging is the reference's choice, kept for faithfulness. A row with a
    label < 0 (an unlabelled image without a pseudo-label) belongs to no class and is left out.
    A class with no rows gets an all-zero centroid, so its relation logit is 0 for every anchor.
    The result is detached: centroids are constants for the CRP loss.
    """
    rows = memory.detach().relu()
    labels = labels.to(device=rows.device, dtype=torch.long)
    # Rows without a class are added to class 0 with weight 0: masking by a product, since
    # boolean indexing would read the mask back to the host.
    member = (labels >= 0).to(rows.dtype)
    classes = labels.clamp(min=0)
    sums = rows.new_zeros(num_classes, rows.shape[1]).index_add_(0, classes, rows * member[:, None])
    # Counted by index_add_, not bincount, which reads the labels' maximum back to the host.
    counts = rows.new_zeros(num_classes).index_add_(0, classes, member)
    means = sums / counts.clamp(min=1).unsqueeze(1)
    return F.normalize(means, dim=1)


def crp_loss(
    student_emb: Tensor,
    teacher_emb: Tensor,
    student_centroids: Tensor,
    teacher_centroids: Tensor,
    temperature: float = 0.07,
) -> Tensor:
    """Categorical relation-preserving loss L_CRP (§b CRP).

    Relations r^S_i = g_s,i · c^S / τ and r^T_i = g_t,i · c^T / τ (one logit per class centroid);
    L_CRP = (1/B) Σ_i KL(softmax(r^T_i) ‖ softmax(r^S_i)). The teacher embedding and both centroid
    sets are detached, so the gradient reaches ``student_emb`` only.
    """
    r_s = student_emb @ student_centroids.detach().T / temperature
    r_t = teacher_emb.detach() @ teacher_centroids.detach().T / temperature
    return batch_kl(r_s, r_t)


def nce_loss(pos: Tensor, neg: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """NCE loss with many positives, the CCD objective (§b CCD).

    ``pos`` [B, P] and ``neg`` [B, K] are already-normalised scores h = exp(s/τ)/Z. With noise
    ratio m = K and noise probability 1/N, the noise mass is c = K/N and

        L = -(1/B) Σ_i [ (1/P) Σ_p log(h_ip / (h_ip + c + ε)) + Σ_k log(c / (h_ik + c + ε)) ].

    Positives are averaged over P while negatives are summed over K; with P = 1 this is CRD's loss.
    """
    noise = neg.shape[1] / n_data
    log_d1 = torch.log(pos / (pos + noise + eps))
    log_d0 = torch.log(noise / (neg + noise + eps))
    return -(log_d1.mean(dim=1) + log_d0.sum(dim=1)).mean()
