"""Mean-teacher EMA update."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crckd.models import ema_update, make_teacher


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def _perturb(module: nn.Module) -> None:
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.add_(torch.randn_like(tensor.float()).to(tensor.dtype) + 1)


def test_make_teacher_is_a_frozen_copy() -> None:
    student = _net()
    teacher = make_teacher(student)
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    for s, t in zip(student.state_dict().values(), teacher.state_dict().values(), strict=True):
        assert torch.equal(s, t)
        assert s.data_ptr() != t.data_ptr()


def test_step_zero_copies_the_student_exactly() -> None:
    student = _net()
    teacher = make_teacher(student)
    _perturb(teacher)
    assert ema_update(teacher, student, step=0) == 0.0
    for s, t in zip(student.parameters(), teacher.parameters(), strict=True):
        assert torch.equal(s, t)


def test_alpha_schedule() -> None:
    student = nn.Linear(2, 2)
    teacher = make_teacher(student)
    for step in range(201):
        alpha = ema_update(teacher, student, step, decay=0.99)
        assert alpha == pytest.approx(min(1 - 1 / (step + 1), 0.99))
    assert ema_update(teacher, student, 98) < 0.99
    assert ema_update(teacher, student, 99) == pytest.approx(0.99)


def test_hand_computed_update() -> None:
    student = nn.Linear(2, 1)
    teacher = make_teacher(student)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[1.0, 2.0]]))
        teacher.bias.fill_(0.0)
        student.weight.copy_(torch.tensor([[3.0, -2.0]]))
        student.bias.fill_(1.0)
    alpha = ema_update(teacher, student, step=3, decay=0.99)  # alpha = 1 - 1/4 = 0.75
    assert alpha == 0.75
    torch.testing.assert_close(teacher.weight, torch.tensor([[1.5, 1.0]]))
    torch.testing.assert_close(teacher.bias, torch.tensor([0.25]))
    assert not teacher.weight.requires_grad


@pytest.mark.parametrize("include_buffers", [False, True])
def test_buffers_follow_only_when_asked(include_buffers: bool) -> None:
    student = _net()
    teacher = make_teacher(student)
    _perturb(student)
    before = {k: v.clone() for k, v in teacher.named_buffers()}
    ema_update(teacher, student, step=1, include_buffers=include_buffers)  # alpha = 0.5
    bn_t, bn_s = teacher[1], student[1]
    if include_buffers:
        expected = 0.5 * before["1.running_mean"] + 0.5 * bn_s.running_mean
        torch.testing.assert_close(bn_t.running_mean, expected)
        expected_var = 0.5 * before["1.running_var"] + 0.5 * bn_s.running_var
        torch.testing.assert_close(bn_t.running_var, expected_var)
        assert torch.equal(bn_t.num_batches_tracked, bn_s.num_batches_tracked)
    else:
        for name, buffer in teacher.named_buffers():
            assert torch.equal(buffer, before[name])


def test_mismatched_modules_are_refused() -> None:
    with pytest.raises(ValueError, match="same tensors"):
        ema_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), step=1)
