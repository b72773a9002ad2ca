"""Zhao et al. 2022 (CVPR), "Decoupled Knowledge Distillation" (DKD)."""

from __future__ import annotations

import torch
from torch import Tensor

from crckd.losses._common import batch_kl, check_pair


def _split_target(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(binary logits [z_y, logsumexp_{c≠y} z_c] as [B, 2], non-target logits as [B, C−1]).

    softmax of the binary logits is b = [p_y, 1 − p_y] of the full softmax, computed stably.
    """
    labels = labels.unsqueeze(1)
    columns = torch.arange(logits.shape[1] - 1, device=logits.device).expand(len(logits), -1)
    # The non-target columns in order: gathered, since a boolean mask would sync with the host.
    rest = logits.gather(1, columns + (columns >= labels).long())
    binary = torch.cat([logits.gather(1, labels), rest.logsumexp(dim=1, keepdim=True)], dim=1)
    return binary, rest


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """L_DKD = α · TCKD + β · NCKD, each batch-mean KL times T² (Zhao et al. 2022).

    With logits z/T: TCKD = KL(b^T ‖ b^S) for the binary target/non-target distributions
    b = [p_y, 1 − p_y]; NCKD = KL(p̂^T ‖ p̂^S) for p̂ the softmax over the C − 1 non-target
    classes only. Needs C >= 3 (with 2 classes NCKD is identically 0). The teacher side is
    detached; the linear warm-up of the whole loss in the DKD recipe is the caller's.
    """
    check_pair(student_logits, teacher_logits)
    num_classes = student_logits.shape[1]
    if num_classes < 3:
        raise ValueError(
            f"DKD needs at least 3 classes (NCKD is empty otherwise), got {num_classes}"
        )
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(
            f"labels must have shape ({student_logits.shape[0]},), got {tuple(labels.shape)}"
        )
    labels = labels.to(device=student_logits.device, dtype=torch.long)
    t = temperature
    binary_s, rest_s = _split_target(student_logits / t, labels)
    binary_t, rest_t = _split_target(teacher_logits / t, labels)
    tckd = batch_kl(binary_s, binary_t)
    nckd = batch_kl(rest_s, rest_t)
    return (alpha * tckd + beta * nckd) * (t * t)
