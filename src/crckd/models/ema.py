"""Mean-teacher EMA: the teacher's weights follow an exponential moving average of the student's."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of `student` whose parameters never require gradients."""
    teacher = copy.deepcopy(student)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(
    teacher: nn.Module,
    student: nn.Module,
    step: int,
    decay: float = 0.99,
    include_buffers: bool = False,
) -> float:
    """θ' ← α θ' + (1 − α) θ with α = min(1 − 1/(step + 1), decay); returns α.

    The warm-up makes step 0 copy the student exactly. Like the reference, only parameters are
    averaged by default; with `include_buffers`, floating-point buffers (BN running statistics)
    are averaged too and integer buffers (``num_batches_tracked``) copied.
    """
    alpha = min(1.0 - 1.0 / (step + 1), decay)
    _average(_paired(teacher.named_parameters(), student.named_parameters()), alpha)
    if include_buffers:
        buffers = _paired(teacher.named_buffers(), student.named_buffers())
        _average([(t, s) for t, s in buffers if t.is_floating_point()], alpha)
        for t, s in buffers:
            if not t.is_floating_point():
                t.copy_(s)
    return alpha


def _paired(teacher_named, student_named) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(teacher, student) tensor pairs; the two modules must have the same structure."""
    teacher_named, student_named = list(teacher_named), list(student_named)
    if [n for n, _ in teacher_named] != [n for n, _ in student_named]:
        raise ValueError("ema_update: teacher and student do not have the same tensors")
    return [(t, s) for (_, t), (_, s) in zip(teacher_named, student_named, strict=True)]


def _average(pairs: list[tuple[torch.Tensor, torch.Tensor]], alpha: float) -> None:
    if not pairs:
        return
    teacher, student = (list(ts) for ts in zip(*pairs, strict=True))
    torch._foreach_mul_(teacher, alpha)
    torch._foreach_add_(teacher, student, alpha=1.0 - alpha)
