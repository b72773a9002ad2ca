"""Mean teacher: an EMA copy of the student supervises it through a consistency loss."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from crckd.config import MethodConfig
from crckd.dist import gather_batch
from crckd.losses import consistency_kl, consistency_mse, sigmoid_rampup, src_loss
from crckd.methods.registry import register_method
from crckd.methods.teacher import TeacherMethod
from crckd.models import ClassifierOutput


@register_method(
    "mt",
    summary="mean teacher: weighted CE + ramped KL(p_teacher || p_student) from begin_epoch",
    reference="Tarvainen & Valpola, NeurIPS 2017 (Baseline 2 in Xing et al., MICCAI 2021)",
)
class MeanTeacher(TeacherMethod):
    """Student plus a teacher that sees its own augmented (and rotated) view."""

    ema_view: ClassVar[str] = "second"

    @classmethod
    def schedule_fields(cls, config: MethodConfig) -> tuple[str, ...]:
        return (*super().schedule_fields(config), "consistency_begin", "consistency_rampup")

    def consistency(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        if self.config.consistency.type == "mse":
            return consistency_mse(student_logits, teacher_logits)
        return consistency_kl(student_logits, teacher_logits)

    def consistency_ramp(self, epoch: int) -> float:
        """Sigmoid ramp-up of the consistency weight, zero before begin_epoch (§b schedule)."""
        if epoch < self.schedule.consistency_begin:
            return 0.0
        return sigmoid_rampup(epoch, self.schedule.consistency_rampup)

    def teacher_terms(
        self,
        student: ClassifierOutput,
        teacher: ClassifierOutput,
        batch: dict[str, Tensor],
        weights: dict[str, float],
    ) -> dict[str, Tensor]:
        terms = super().teacher_terms(student, teacher, batch, weights)
        if weights["kl"] > 0:
            terms["kl"] = self.consistency(student.logits, teacher.logits)
        return terms

    def loss_weights(self, epoch: int) -> dict[str, float]:
        kl = self.config.consistency.weight * self.consistency_ramp(epoch)
        return {**super().loss_weights(epoch), "kl": kl}


@register_method(
    "src_mt",
    summary="mean teacher + sample relation consistency of the 128-d features",
    reference="Liu et al., IEEE TMI 2020 (SRC-MT)",
)
class RelationMeanTeacher(MeanTeacher):
    """SRC-MT: consistency of predictions and of the batch's sample-relation matrices."""

    def teacher_terms(
        self,
        student: ClassifierOutput,
        teacher: ClassifierOutput,
        batch: dict[str, Tensor],
        weights: dict[str, float],
    ) -> dict[str, Tensor]:
        terms = super().teacher_terms(student, teacher, batch, weights)
        if weights["src"] > 0:
            terms["src"] = src_loss(gather_batch(student.features), gather_batch(teacher.features))
        return terms

    def loss_weights(self, epoch: int) -> dict[str, float]:
        src = self.config.distill.weight * self.consistency_ramp(epoch)
        return {**super().loss_weights(epoch), "src": src}
