"""Methods with a teacher: an EMA copy of the student, or a frozen trained checkpoint.

Also the `kd` method (Hinton et al. 2015): every teacher method can add the KD term through
`method.distill.kd_weight`, and `kd` is exactly that term on its own.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from crckd.config import MethodConfig
from crckd.data import rotate_flip_batch
from crckd.dist import rank, unwrap, world_size
from crckd.errors import ConfigError
from crckd.losses import kd_loss
from crckd.methods.base import Method, MethodContext
from crckd.methods.registry import register_method
from crckd.models import Classifier, ClassifierOutput, ema_update, make_teacher


@register_method(
    "kd",
    summary="Hinton KD: 0.1 CE + 0.9 KL(softened teacher || softened student), T = 4",
    reference="Hinton, Vinyals & Dean, arXiv 1503.02531 (2015)",
    defaults={"distill": {"kd_weight": 0.9, "ce_weight": 0.1}},
)
class TeacherMethod(Method):
    """A student with a teacher that never gets a gradient.

    `method.teacher.mode=ema`: the teacher is an EMA of the student (CRCKD's setting), updated
    after each step. `frozen`: a trained crckd checkpoint of any backbone, read by the trainer,
    fed in its own normalisation (`FrozenTeacher`) and never updated (the RepDistiller/mdistiller
    setting). The teacher sees the student's view (`same`) or a second augmented view
    (`second`, the mean-teacher family's default with EMA).
    """

    ema_view: ClassVar[str] = "same"
    # CE skips an unlabelled image; the teacher terms (KD, the consistency and relation terms
    # of the subclasses) need no label, so every image counts in them.
    learns_from_unlabeled: ClassVar[bool] = True

    def __init__(self, student: Classifier, config: MethodConfig, context: MethodContext) -> None:
        super().__init__(student, config, context)
        self.frozen = config.teacher.mode == "frozen"
        if self.frozen:
            if context.frozen_teacher is None:
                raise ConfigError("method.teacher.mode=frozen needs method.teacher.checkpoint")
            self.teacher = context.frozen_teacher.model
            self.teacher.requires_grad_(False)
            input_map = context.frozen_teacher.input_map(context.normalization)
            if input_map is not None:
                scale, shift = (torch.tensor(v).view(1, -1, 1, 1) for v in input_map)
                self.register_buffer("teacher_scale", scale, persistent=False)
                self.register_buffer("teacher_shift", shift, persistent=False)
        else:
            self.teacher = make_teacher(student)
        view = config.teacher.view
        self.teacher_view = view if view != "auto" else ("same" if self.frozen else self.ema_view)

    @classmethod
    def schedule_fields(cls, config: MethodConfig) -> tuple[str, ...]:
        return ("ema_decay",) if config.teacher.mode == "ema" else ()

    @property
    def ema_decay(self) -> float | None:
        return None if self.frozen else self.schedule.ema_decay

    @property
    def views(self) -> int:  # type: ignore[override]
        return 2 if self.teacher_view == "second" else 1

    def train(self, mode: bool = True) -> TeacherMethod:
        super().train(mode)
        teacher_trains = not self.frozen and self.config.ema.teacher_mode == "train"
        self.teacher.train(mode and teacher_trains)
        return self

    def teacher_output(self, batch: dict[str, Tensor]) -> ClassifierOutput:
        """The teacher's prediction on its view, never with gradient."""
        if self.teacher_view == "second":
            view = batch["image2"]
            if self.config.teacher_perturb:
                view = rotate_flip_batch(
                    view, generator=self.generator, rank=rank(), world_size=world_size()
                )
        else:
            view = batch["image"]
        with torch.no_grad():
            if hasattr(self, "teacher_scale"):  # a frozen teacher normalised differently
                view = view * self.teacher_scale + self.teacher_shift
            return self.teacher(view)

    def training_losses(
        self, batch: dict[str, Tensor], epoch: int, weights: dict[str, float]
    ) -> dict[str, Tensor]:
        student = self.student(batch["image"])
        terms = {"ce": self.cross_entropy(student.logits, batch["label"])}
        if self.needs_teacher(weights):
            teacher = self.teacher_output(batch)
            terms.update(self.teacher_terms(student, teacher, batch, weights))
        return terms

    def needs_teacher(self, weights: dict[str, float]) -> bool:
        """Whether any term that needs the teacher is on this epoch."""
        return any(weight > 0 for name, weight in weights.items() if name != "ce")

    def teacher_terms(
        self,
        student: ClassifierOutput,
        teacher: ClassifierOutput,
        batch: dict[str, Tensor],
        weights: dict[str, float],
    ) -> dict[str, Tensor]:
        """Terms computed from the student's and the teacher's outputs (here: Hinton KD)."""
        if weights["kd"] == 0:
            return {}
        return {"kd": kd_loss(student.logits, teacher.logits, self.config.distill.temperature)}

    def loss_weights(self, epoch: int) -> dict[str, float]:
        distill = self.config.distill
        return {"ce": distill.ce_weight, "kd": distill.kd_weight}

    def after_step(self, step: int) -> None:
        if not self.frozen:
            student = unwrap(self.student)  # under DDP the student is wrapped
            include_buffers = self.config.ema.include_buffers
            ema_update(self.teacher, student, step, self.schedule.ema_decay, include_buffers)
