"""A frozen teacher (`method.teacher.mode=frozen`): a trained model that teaches a run without
being trained, and sees the student's images in the normalisation it was trained with.

The engine reads the checkpoint and rebuilds the model; this module checks it against the run
and works out how to feed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from crckd.config import TeacherConfig
from crckd.data import Normalization
from crckd.errors import ConfigError

# Per-channel (scale, shift) with x_teacher = x_student * scale + shift.
InputMap = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class FrozenTeacher:
    """A trained model and the images it was trained on."""

    model: nn.Module
    classes: tuple[str, ...]
    image_size: int
    normalization: Normalization
    checkpoint: Path  # where it was read from, for messages

    def check_classes(self, classes: tuple[str, ...]) -> None:
        """Refuse a teacher trained on other classes than the run's data."""
        if self.classes != classes:
            raise ConfigError(
                f"teacher {self.checkpoint} was trained on classes {list(self.classes)}, "
                f"the data has {list(classes)}"
            )

    def input_map(self, student: Normalization) -> InputMap | None:
        """How to take images normalised for the student to this teacher's normalisation; None
        when the two agree."""
        return renormalization(student, self.normalization)

    def notes(self, image_size: int) -> list[str]:
        """A teacher trained at another image size sees the student's images as they are (its
        input is re-normalised, not resized): say so."""
        if self.image_size == image_size:
            return []
        return [
            f"note: the frozen teacher {self.checkpoint} was trained on {self.image_size} px "
            f"images; it sees this run's {image_size} px images"
        ]


def frozen_checkpoint(teacher: TeacherConfig) -> Path | None:
    """The checkpoint of the frozen teacher to load; None when the teacher is an EMA."""
    if teacher.mode != "frozen":
        if teacher.checkpoint is not None:
            raise ConfigError(
                "method.teacher.checkpoint is set: also set method.teacher.mode=frozen"
            )
        return None
    if teacher.checkpoint is None:
        raise ConfigError("method.teacher.mode=frozen needs method.teacher.checkpoint")
    return teacher.checkpoint


def renormalization(student: Normalization, teacher: Normalization) -> InputMap | None:
    """Per-channel (scale, shift) with x_teacher = x_student * scale + shift, for images
    normalised with `student` given to a teacher trained on `teacher`; None when they agree."""
    (mean_s, std_s), (mean_t, std_t) = student, teacher
    if (tuple(mean_s), tuple(std_s)) == (tuple(mean_t), tuple(std_t)):
        return None
    scale = tuple(s / t for s, t in zip(std_s, std_t, strict=True))
    shift = tuple((ms - mt) / t for ms, mt, t in zip(mean_s, mean_t, std_t, strict=True))
    return scale, shift
