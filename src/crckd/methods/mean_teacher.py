"""Mean teacher: an EMA copy of the student supervises it through a consistency loss."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from crckd.config import MethodConfig
from crckd.data import rotate_flip_batch
from crckd.losses import consistency_kl, consistency_mse, sigmoid_rampup
from crckd.methods.base import Method, MethodContext
from crckd.methods.registry import register_method
from crckd.models import Classifier, ClassifierOutput, ema_update, make_teacher


@register_method(
    "mt",
    summary="mean teacher: weighted CE + ramped KL(p_teacher || p_student) from begin_epoch",
    reference="Tarvainen & Valpola, NeurIPS 2017 (Baseline 2 in Xing et al., MICCAI 2021)",
)
class MeanTeacher(Method):
    """Student plus an EMA teacher that sees its own augmented (and rotated) view."""

    views: ClassVar[int] = 2

    def __init__(self, student: Classifier, config: MethodConfig, context: MethodContext) -> None:
        super().__init__(student, config, context)
        self.teacher = make_teacher(student)

    def train(self, mode: bool = True) -> MeanTeacher:
        super().train(mode)
        self.teacher.train(mode and self.config.ema.teacher_mode == "train")
        return self

    def teacher_output(self, batch: dict[str, Tensor]) -> ClassifierOutput:
        """The teacher's prediction on its own view, never with gradient."""
        view = batch["image2"]
        if self.config.teacher_perturb:
            view = rotate_flip_batch(view, generator=self.generator)
        with torch.no_grad():
            return self.teacher(view)

    def consistency(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        if self.config.consistency.type == "mse":
            return consistency_mse(student_logits, teacher_logits)
        return consistency_kl(student_logits, teacher_logits)

    def training_losses(self, batch: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        student = self.student(batch["image"])
        terms = {"ce": self.cross_entropy(student.logits, batch["label"])}
        if self.loss_weights(epoch)["kl"] > 0:
            teacher = self.teacher_output(batch)
            terms["kl"] = self.consistency(student.logits, teacher.logits)
        return terms

    def loss_weights(self, epoch: int) -> dict[str, float]:
        cfg = self.config.consistency
        ramp = sigmoid_rampup(epoch, cfg.rampup_epochs)
        return {"ce": 1.0, "kl": cfg.weight * ramp if epoch >= cfg.begin_epoch else 0.0}

    def after_step(self, step: int) -> None:
        ema = self.config.ema
        ema_update(self.teacher, self.student, step, ema.decay, ema.include_buffers)
