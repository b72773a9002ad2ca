"""The method interface the trainer talks to.

A method is an `nn.Module` that owns the student and whatever else it trains or keeps (teacher,
projection heads, memory banks), so that one `state_dict()` checkpoints all of it.
`loss_weights(epoch)` says how much each named loss term counts that epoch; the trainer asks once
per epoch and hands the weights to every step's `training_losses(batch, epoch, weights)`, which
returns the unweighted terms (a term whose weight is 0 may be left out, and not computed). The
trainer sums `weight * term`, logs every term, and calls `after_step`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crckd.config import MethodConfig
from crckd.data.transforms import IMAGENET_NORMALIZATION, Normalization
from crckd.dist import all_reduce_mean, world_size
from crckd.errors import ConfigError
from crckd.methods.frozen_teacher import FrozenTeacher
from crckd.methods.schedule import PAPER_SCHEDULE, Schedule, describe_schedule, resolve_schedule
from crckd.models import Classifier

# The label of an unlabelled image, in a batch and in `MethodContext.train_labels`.
UNLABELED = -1


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about the data: derived from the training split, never typed in."""

    num_classes: int
    # One label per training image the method trains on (memory-bank row), -1 if unlabelled.
    train_labels: np.ndarray
    # From the labelled images only.
    class_weights: Tensor | None
    epochs: int
    image_size: int = 224
    # How the student's input images are normalised (a frozen teacher may want another).
    normalization: Normalization = IMAGENET_NORMALIZATION
    frozen_teacher: FrozenTeacher | None = None
    # Optimiser steps per epoch (the trainer's); needed for an EMA half-life fraction.
    steps_per_epoch: int | None = None


class Method(nn.Module):
    """Base class: weighted cross-entropy on the student only (the `ce` baseline)."""

    views: ClassVar[int] = 1
    # Whether the method trains on unlabelled images (label -1 in a batch and in
    # `MethodContext.train_labels`); the trainer gives them only to a method that says so.
    # Plain CE has nothing to learn from them.
    learns_from_unlabeled: ClassVar[bool] = False
    # The loss whose keyword arguments `method.distill.params` sets; None: the method takes none.
    loss_function: ClassVar[Callable[..., Any] | None] = None
    # The schedule values (EMA decay, begin epochs, ramps) of the method's paper, at 80 epochs.
    paper_schedule: ClassVar[Schedule] = PAPER_SCHEDULE

    def __init__(self, student: Classifier, config: MethodConfig, context: MethodContext) -> None:
        check_loss_params(self.loss_function, config.distill.params, config.name)
        super().__init__()
        self.student = student
        self.config = config
        self.context = context
        self.schedule = resolve_schedule(
            config, context.epochs, context.steps_per_epoch, self.paper_schedule
        )
        weights = context.class_weights
        self.register_buffer("class_weights", weights)
        self.generator = torch.Generator()

    @classmethod
    def schedule_fields(cls, config: MethodConfig) -> tuple[str, ...]:
        """The `Schedule` fields this method reads with these settings (none for plain CE)."""
        return ()

    def schedule_summary(self) -> str:
        """The resolved schedule this run trains with, under its config keys ('' if none)."""
        return describe_schedule(self.schedule, self.schedule_fields(self.config))

    @property
    def ema_decay(self) -> float | None:
        """The decay of an EMA teacher; None without one."""
        return None

    def seed(self, seed: int) -> None:
        """Reseed the method's own random draws (views, contrast sets); called every epoch."""
        self.generator.manual_seed(seed)

    def cross_entropy(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Class-weighted CE over the labelled rows, mean normalised by their weights as in
        PyTorch (§b losses); a row labelled -1 (an unlabelled image) adds nothing.

        Under DDP the normaliser is the weight of the whole global batch's labelled rows, so
        that the gradient DDP averages over the ranks is the one a single process gets from the
        global batch. A batch without labelled rows (globally, under DDP) gives 0, not 0/0.
        """
        weights = self.class_weights
        labelled = labels >= 0
        if world_size() == 1:
            loss = F.cross_entropy(logits, labels, weight=weights, ignore_index=UNLABELED)
            # Selected, not masked: an all-ignored mean is NaN, and NaN * 0 is NaN too.
            return torch.where(labelled.any(), loss, loss.new_zeros(()))
        summed = F.cross_entropy(
            logits, labels, weight=weights, ignore_index=UNLABELED, reduction="sum"
        )
        if weights is None:
            weight = labelled.sum(dtype=summed.dtype)
        else:
            classes = labels.clamp(min=0).to(weights.device)
            weight = (weights[classes] * labelled.to(weights.device, weights.dtype)).sum()
        weight = all_reduce_mean(weight)  # = global weight / world size
        return summed / torch.where(weight > 0, weight, torch.ones_like(weight))

    def training_losses(
        self, batch: dict[str, Tensor], epoch: int, weights: dict[str, float]
    ) -> dict[str, Tensor]:
        """Unweighted loss terms for one batch of `epoch` (0-based); `weights` are
        `loss_weights(epoch)`, and terms whose weight is 0 may be left out."""
        output = self.student(batch["image"])
        return {"ce": self.cross_entropy(output.logits, batch["label"])}

    def loss_weights(self, epoch: int) -> dict[str, float]:
        """Weight of each named term at `epoch` (0-based)."""
        return {"ce": 1.0}

    def after_step(self, step: int) -> None:
        """Called after every optimiser step (EMA updates live here)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (never the teacher's)."""
        return [p for p in self.parameters() if p.requires_grad]


def check_loss_params(
    loss: Callable[..., Any] | None, params: Mapping[str, float], method: str
) -> None:
    """Refuse a key of `method.distill.params` that is not a keyword parameter of `loss` (one
    with a default; for a class, of its constructor)."""
    accepted: list[str] = []
    if loss is not None:
        for name, parameter in inspect.signature(loss).parameters.items():
            keyword = parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
            if keyword and parameter.default is not parameter.empty:
                accepted.append(name)
    unknown = [key for key in params if key not in accepted]
    if unknown:
        of = f" ({loss.__name__})" if loss is not None else ""
        keys = f"accepted keys: {', '.join(accepted)}" if accepted else "it accepts no keys"
        raise ConfigError(
            f"method.distill.params: unknown key {unknown[0]!r} for method {method!r}{of}; {keys}"
        )
