"""The standard KD baselines: one distillation term on logits, embeddings or feature maps.

Each works with either teacher mode (EMA or frozen checkpoint). Feature maps come from forward
hooks on the stage outputs timm lists for the backbone (`method.distill.layers` overrides);
small heads absorb channel mismatches between student and teacher. Default weights follow the
papers' or RepDistiller's CIFAR settings; `method.distill.weight` changes them and
`method.distill.params` sets keyword arguments of the loss function, bound when the method is
built (a key the loss does not take is a `ConfigError` then).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from crckd.config import MethodConfig
from crckd.dist import gather_batch
from crckd.errors import ConfigError
from crckd.losses import (
    VIDLoss,
    at_loss,
    cc_loss,
    dist_loss,
    dkd_loss,
    fitnet_loss,
    pkt_loss,
    rkd_loss,
    sp_loss,
)
from crckd.methods.base import MethodContext
from crckd.methods.registry import register_method
from crckd.methods.schedule import PAPER_SCHEDULE
from crckd.methods.teacher import TeacherMethod
from crckd.models import Classifier, ClassifierOutput, FeatureTap, stage_layers


class Distiller(TeacherMethod, abc.ABC):
    """Cross-entropy plus one named distillation term (`term`), switched on at begin_epoch."""

    term: ClassVar[str]
    stages: ClassVar[int] = 0  # feature-map stages tapped (0: the method needs no maps)
    loss_function: ClassVar[Callable[..., Any]]

    def __init__(self, student: Classifier, config: MethodConfig, context: MethodContext) -> None:
        super().__init__(student, config, context)  # checks method.distill.params
        self.loss = functools.partial(self.loss_function, **config.distill.params)
        self.student_tap = self.teacher_tap = None
        if self.stages:
            layers = config.distill.layers
            self.student_tap = FeatureTap(student, layers or stage_layers(student, self.stages))
            self.teacher_tap = FeatureTap(
                self.teacher, layers or stage_layers(self.teacher, self.stages)
            )
            if len(self.student_tap.layers) != len(self.teacher_tap.layers):
                raise ConfigError("student and teacher need the same number of tapped layers")

    @classmethod
    def schedule_fields(cls, config: MethodConfig) -> tuple[str, ...]:
        return (*super().schedule_fields(config), "distill_begin", "distill_warmup")

    def feature_channels(self, image_size: int) -> list[tuple[int, int]]:
        """(student, teacher) channels of each tapped layer, from one dummy forward."""
        probe = torch.zeros(2, 3, image_size, image_size)
        with torch.no_grad():
            for model in (self.student, self.teacher):
                was_training = model.training
                model.eval()
                model(probe)
                model.train(was_training)
        pairs = zip(self.student_tap.features(), self.teacher_tap.features(), strict=True)
        return [(s.shape[1], t.shape[1]) for s, t in pairs]

    @abc.abstractmethod
    def distill_loss(
        self, student: ClassifierOutput, teacher: ClassifierOutput, batch: dict[str, Tensor]
    ) -> Tensor:
        """The method's own term, from both outputs and (for map methods) the taps."""

    def teacher_terms(
        self,
        student: ClassifierOutput,
        teacher: ClassifierOutput,
        batch: dict[str, Tensor],
        weights: dict[str, float],
    ) -> dict[str, Tensor]:
        terms = super().teacher_terms(student, teacher, batch, weights)
        if weights[self.term] > 0:
            terms[self.term] = self.distill_loss(student, teacher, batch)
        return terms

    def loss_weights(self, epoch: int) -> dict[str, float]:
        begin, warmup = self.schedule.distill_begin, self.schedule.distill_warmup
        weight = 0.0
        if epoch >= begin:
            ramp = min(1.0, (epoch - begin + 1) / warmup) if warmup else 1.0
            weight = self.config.distill.weight * ramp
        return {**super().loss_weights(epoch), self.term: weight}


def _paper(name: str, summary: str, reference: str, weight: float) -> Callable[[type], type]:
    return register_method(
        name, summary=summary, reference=reference, defaults={"distill": {"weight": weight}}
    )


@_paper(
    "dkd",
    "decoupled KD (target and non-target terms)",
    "Zhao et al., CVPR 2022",
    1.0,
)
class DecoupledKD(Distiller):
    term = "dkd"
    loss_function = staticmethod(dkd_loss)
    learns_from_unlabeled = False  # its term splits each image's logits at its label
    paper_schedule = dataclasses.replace(PAPER_SCHEDULE, distill_warmup=20.0)  # its 20 epochs

    def __init__(self, student: Classifier, config: MethodConfig, context: MethodContext) -> None:
        if context.num_classes < 3:
            raise ConfigError(
                f"dkd needs at least 3 classes (its non-target term is empty with "
                f"{context.num_classes}); use kd instead"
            )
        super().__init__(student, config, context)

    def distill_loss(self, student, teacher, batch):
        return self.loss(student.logits, teacher.logits, batch["label"])


@_paper(
    "dist",
    "DIST: inter- and intra-class Pearson relations of predictions",
    "Huang et al., NeurIPS 2022",
    1.0,
)
class DIST(Distiller):
    term = "dist"
    loss_function = staticmethod(dist_loss)

    def distill_loss(self, student, teacher, batch):
        logits = gather_batch(student.logits), gather_batch(teacher.logits)
        return self.loss(*logits)


@_paper(
    "rkd",
    "relational KD: distances and angles of the 128-d features",
    "Park et al., CVPR 2019",
    1.0,
)
class RelationalKD(Distiller):
    term = "rkd"
    loss_function = staticmethod(rkd_loss)

    def distill_loss(self, student, teacher, batch):
        features = gather_batch(student.features), gather_batch(teacher.features)
        return self.loss(*features)


@_paper(
    "pkt",
    "probabilistic knowledge transfer on the 128-d features",
    "Passalis & Tefas, ECCV 2018",
    30000.0,
)
class ProbabilisticKT(Distiller):
    term = "pkt"
    loss_function = staticmethod(pkt_loss)

    def distill_loss(self, student, teacher, batch):
        features = gather_batch(student.features), gather_batch(teacher.features)
        return self.loss(*features)


@_paper("cc", "correlation congruence of the 128-d features", "Peng et al., ICCV 2019", 0.02)
class CorrelationCongruence(Distiller):
    term = "cc"
    loss_function = staticmethod(cc_loss)

    def distill_loss(self, student, teacher, batch):
        features = gather_batch(student.features), gather_batch(teacher.features)
        return self.loss(*features)


@_paper("sp", "similarity-preserving KD on the last stage's maps", "Tung & Mori, ICCV 2019", 3000.0)
class SimilarityPreserving(Distiller):
    term = "sp"
    stages = 1
    loss_function = staticmethod(sp_loss)

    def distill_loss(self, student, teacher, batch):
        (s,), (t,) = self.student_tap.features(), self.teacher_tap.features()
        return self.loss(gather_batch(s), gather_batch(t))


@_paper(
    "at", "attention transfer on the last three stages", "Zagoruyko & Komodakis, ICLR 2017", 1000.0
)
class AttentionTransfer(Distiller):
    term = "at"
    stages = 3
    loss_function = staticmethod(at_loss)

    def distill_loss(self, student, teacher, batch):
        return self.loss(self.student_tap.features(), self.teacher_tap.features())


@_paper(
    "fitnet",
    "FitNets hint: 1x1-conv regressor from the student's to the teacher's maps",
    "Romero et al., ICLR 2015",
    100.0,
)
class FitNet(Distiller):
    term = "fitnet"
    stages = 1
    loss_function = staticmethod(fitnet_loss)

    def __init__(self, student: Classifier, config: MethodConfig, context: MethodContext) -> None:
        super().__init__(student, config, context)
        ((s_channels, t_channels),) = self.feature_channels(context.image_size)
        self.regressor = nn.Sequential(
            nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(t_channels),
        )

    def distill_loss(self, student, teacher, batch):
        (s,), (t,) = self.student_tap.features(), self.teacher_tap.features()
        hint = self.regressor(s)
        if hint.shape[-2:] != t.shape[-2:]:
            hint = nn.functional.adaptive_avg_pool2d(hint, t.shape[-2:])
        return self.loss(hint, t)


@_paper(
    "vid",
    "variational information distillation on the last three stages",
    "Ahn et al., CVPR 2019",
    1.0,
)
class VariationalInformation(Distiller):
    term = "vid"
    stages = 3
    loss_function = VIDLoss

    def __init__(self, student: Classifier, config: MethodConfig, context: MethodContext) -> None:
        super().__init__(student, config, context)
        self.estimators = _VIDEstimators(
            self.loss(s, t, t) for s, t in self.feature_channels(context.image_size)
        )

    def distill_loss(self, student, teacher, batch):
        return self.estimators(self.student_tap.features(), self.teacher_tap.features())


class _VIDEstimators(nn.ModuleList):
    """VID's per-layer estimators called as one module: DDP wraps modules by their forward
    (a wrapped plain ModuleList could not be iterated), and averages their gradients."""

    def forward(self, student_maps: list[Tensor], teacher_maps: list[Tensor]) -> Tensor:
        pairs = zip(self, student_maps, teacher_maps, strict=True)
        return torch.stack([vid(s, t) for vid, s, t in pairs]).sum()
