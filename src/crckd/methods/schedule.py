"""A method's schedule (EMA decay, start epochs, ramp-ups), in epochs or relative to the run.

The paper's values are written for one budget: 80 epochs of 110 steps. `method.schedule=epochs`
takes every schedule value that is not set as the paper's, as it is; `relative` takes it as the
same fraction of `train.epochs` as the paper's value is of its 80 epochs, and the EMA as the
paper's half-life, as the same fraction of all training steps. A value that is set, in epochs
or as a fraction, is used in both modes. `resolve_schedule` turns the settings into the
concrete values of one run (docs/crckd.md, "Schedule relative to the run").
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from crckd.config import MethodConfig
from crckd.errors import ConfigError

PAPER_EPOCHS = 80
# The reference's HAM10000 training split holds 7012 images (70 % of 10015; a comment in its
# train_CRCKD.py) in batches of 64 with the last, partial batch kept: ceil(7012 / 64) = 110.
PAPER_STEPS_PER_EPOCH = 110


@dataclass(frozen=True)
class Schedule:
    """Concrete schedule values of a run: epochs are 0-based, a term is on from its begin
    epoch, ramp-up and warm-up lengths are in epochs (not rounded)."""

    ema_decay: float
    consistency_begin: int
    consistency_rampup: float
    ccd_begin: int
    crp_begin: int
    distill_begin: int
    distill_warmup: float

    @property
    def ema_half_life_steps(self) -> float:
        """Steps after which a student snapshot counts half in the teacher: ln ½ / ln decay."""
        return half_life_steps(self.ema_decay)


# The paper's schedule (crckd-method.md §b, §c): MT and CRP from epoch 20 of 80, a 30-epoch
# ramp-up, EMA decay 0.99. A method whose paper says otherwise (DKD) overrides its fields.
PAPER_SCHEDULE = Schedule(
    ema_decay=0.99,
    consistency_begin=20,
    consistency_rampup=30.0,
    ccd_begin=0,
    crp_begin=20,
    distill_begin=0,
    distill_warmup=0.0,
)

# Schedule field -> (config section, key in epochs, key as a fraction of train.epochs).
_EPOCH_KEYS = {
    "consistency_begin": ("consistency", "begin_epoch", "begin_fraction"),
    "consistency_rampup": ("consistency", "rampup_epochs", "rampup_fraction"),
    "ccd_begin": ("ccd", "begin_epoch", "begin_fraction"),
    "crp_begin": ("crp", "begin_epoch", "begin_fraction"),
    "distill_begin": ("distill", "begin_epoch", "begin_fraction"),
    "distill_warmup": ("distill", "warmup_epochs", "warmup_fraction"),
}


def half_life_steps(decay: float) -> float:
    """ln ½ / ln decay: 0 for decay 0 (no averaging), infinite for decay 1 (never updated)."""
    if decay <= 0:
        return 0.0
    if decay >= 1:
        return math.inf
    return math.log(0.5) / math.log(decay)


def decay_for_half_life(steps: float) -> float:
    """The EMA decay whose half-life is `steps`: 0.5 ** (1 / steps)."""
    return 0.5 ** (1.0 / steps)


def paper_half_life_fraction(paper: Schedule = PAPER_SCHEDULE) -> float:
    """The paper's EMA half-life as a fraction of its 80 x 110 steps (69.0 / 8800 for 0.99)."""
    return half_life_steps(paper.ema_decay) / (PAPER_EPOCHS * PAPER_STEPS_PER_EPOCH)


def begin_epoch(fraction: float, epochs: int) -> int:
    """The first epoch e with e >= fraction x epochs (the product rounded to 9 decimals, so
    that 0.1 x 30 is 3 and not 3.0000000000000004)."""
    return math.ceil(round(fraction * epochs, 9))


def resolve_schedule(
    method: MethodConfig,
    epochs: int,
    steps_per_epoch: int | None,
    paper: Schedule = PAPER_SCHEDULE,
) -> Schedule:
    """The schedule a run of `epochs` epochs of `steps_per_epoch` optimiser steps trains with.

    Per value: the setting in epochs (or the EMA decay) if given, else its fraction (or the
    EMA half-life) if given, else the paper's value (`method.schedule=epochs`) or the paper's
    fraction (`relative`). `steps_per_epoch` is needed only for an EMA half-life fraction.
    """
    values = {
        field: _in_epochs(
            field,
            getattr(getattr(method, section), epoch_key),
            getattr(getattr(method, section), fraction_key),
            method.schedule,
            epochs,
            paper,
        )
        for field, (section, epoch_key, fraction_key) in _EPOCH_KEYS.items()
    }
    return Schedule(ema_decay=_ema_decay(method, epochs, steps_per_epoch, paper), **values)


def _in_epochs(
    field: str,
    value: float | None,
    fraction: float | None,
    mode: str,
    epochs: int | None,
    paper: Schedule,
) -> float | None:
    """One epoch-based schedule value: as set in epochs, else its `fraction` of `epochs`, else
    the paper's value (`mode` "epochs") or the paper's fraction ("relative"). None when it
    needs a fraction of a run whose length is unknown (`epochs` None)."""
    if value is not None:
        return value
    if fraction is None:
        if mode == "epochs":
            return getattr(paper, field)
        fraction = getattr(paper, field) / PAPER_EPOCHS
    if epochs is None:
        return None
    return begin_epoch(fraction, epochs) if field.endswith("_begin") else fraction * epochs


def _ema_decay(
    method: MethodConfig, epochs: int, steps_per_epoch: int | None, paper: Schedule
) -> float:
    ema = method.ema
    if ema.decay is not None:
        return ema.decay
    if ema.half_life_steps is not None:
        return decay_for_half_life(ema.half_life_steps)
    fraction = ema.half_life_fraction
    if fraction is None:
        if method.schedule == "epochs":
            return paper.ema_decay
        fraction = paper_half_life_fraction(paper)
    if steps_per_epoch is None:
        raise ConfigError("an EMA half-life fraction needs the run's steps per epoch")
    return decay_for_half_life(fraction * epochs * steps_per_epoch)


def describe_schedule(schedule: Schedule, used: tuple[str, ...]) -> str:
    """The `used` fields of a resolved schedule under their config keys (epochs 0-based)."""
    parts = []
    for field in used:
        value = getattr(schedule, field)
        if field == "ema_decay":
            half_life = schedule.ema_half_life_steps
            parts.append(f"method.ema.decay={value:.6g} (half-life {half_life:.4g} steps)")
        else:
            section, key, _ = _EPOCH_KEYS[field]
            parts.append(f"method.{section}.{key}={value:g}")
    return " ".join(parts)


def describe_relative(schedule: Schedule, used: tuple[str, ...]) -> str:
    """The `used` fields of a schedule for the paper's run (80 epochs of 110 steps) as the
    fractions `method.schedule=relative` derives from it."""
    parts = []
    for field in used:
        if field == "ema_decay":
            fraction = paper_half_life_fraction(schedule)
            parts.append(f"method.ema.half_life_fraction={fraction:.4g}")
        else:
            section, _, key = _EPOCH_KEYS[field]
            parts.append(f"method.{section}.{key}={getattr(schedule, field) / PAPER_EPOCHS:g}")
    return " ".join(parts)


def explicit_schedule(config: dict[str, Any], paper: Schedule = PAPER_SCHEDULE) -> dict[str, Any]:
    """A config (as a dict) with every epoch-based schedule value written out in epochs, as
    `resolve_schedule` takes it for the config's `train.epochs`, and the EMA in the unit its
    mode implies (the paper's decay, or the paper's half-life fraction). Configs that say the
    same schedule in other words (a fraction or an epoch, the relative mode or the values it
    derives, the paper's values left unset or written out as configs saved before the
    relative schedule held them) then compare equal; `method.schedule` itself is dropped,
    since every value it decided is written out."""
    method = config.get("method") or {}
    mode = method.get("schedule", "epochs")
    epochs = (config.get("train") or {}).get("epochs")
    filled = copy.deepcopy(config)
    sections = filled.setdefault("method", {})
    sections.pop("schedule", None)
    for field, (section, epoch_key, fraction_key) in _EPOCH_KEYS.items():
        settings = sections.setdefault(section, {})
        value = _in_epochs(
            field, settings.get(epoch_key), settings.get(fraction_key), mode, epochs, paper
        )
        if value is not None:  # else a fraction with no run length to take it of: left as is
            settings[epoch_key], settings[fraction_key] = value, None
    ema = sections.setdefault("ema", {})
    if all(ema.get(key) is None for key in ("decay", "half_life_steps", "half_life_fraction")):
        if mode == "epochs":
            ema["decay"] = paper.ema_decay
        else:
            ema["half_life_fraction"] = paper_half_life_fraction(paper)
    return filled
