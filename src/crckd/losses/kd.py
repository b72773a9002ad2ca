"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network" (KD).

Also home of the student/teacher shape checks shared by the baseline losses.
"""

from __future__ import annotations

from torch import Tensor

from crckd.losses.crckd import _batch_kl


def _check_pair(student: Tensor, teacher: Tensor, *, batch_only: bool = False) -> None:
    """Raise ValueError unless the shapes match (only the batch dimension if ``batch_only``).

    Broadcasting would otherwise turn e.g. a [B, C] vs [1, C] mistake into a silent wrong loss.
    """
    same = student.shape[:1] == teacher.shape[:1] if batch_only else student.shape == teacher.shape
    if not same:
        what = "batch sizes" if batch_only else "shapes"
        raise ValueError(
            f"student and teacher {what} differ: {tuple(student.shape)} vs {tuple(teacher.shape)}"
        )


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """L_KD = T² · (1/B) Σ_i KL(softmax(z_t,i / T) ‖ softmax(z_s,i / T)) (Hinton et al. 2015).

    The T² factor keeps the gradient scale independent of T. Only the soft term: the caller adds
    the cross-entropy on labels. The teacher side is detached.
    """
    _check_pair(student_logits, teacher_logits)
    t = temperature
    return _batch_kl(student_logits / t, teacher_logits / t) * (t * t)
