"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network" (KD)."""

from __future__ import annotations

from torch import Tensor

from crckd.losses._common import batch_kl, check_pair


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """L_KD = T² · (1/B) Σ_i KL(softmax(z_t,i / T) ‖ softmax(z_s,i / T)) (Hinton et al. 2015).

    The T² factor keeps the gradient scale independent of T. Only the soft term: the caller adds
    the cross-entropy on labels. The teacher side is detached.
    """
    check_pair(student_logits, teacher_logits)
    t = temperature
    return batch_kl(student_logits / t, teacher_logits / t) * (t * t)
