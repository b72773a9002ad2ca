"""LossWatch: NaN/Inf loss terms are found at the next check, naming the first bad step."""

from __future__ import annotations

import pytest
import torch

from crckd.engine.finite import LossWatch
from crckd.errors import NumericalError


def terms(ce: float, kl: float = 0.5) -> dict[str, torch.Tensor]:
    return {"ce": torch.tensor(ce), "kl": torch.tensor(kl)}


def test_due_after_every_steps_and_finite_terms_pass() -> None:
    watch = LossWatch(every=3)
    for step in range(2):
        watch.add(step, terms(1.0))
        assert not watch.due
    watch.add(2, terms(1.0))
    assert watch.due
    watch.check(epoch=0, last_good="last.pt")
    assert not watch.due  # checked steps are forgotten


def test_the_first_non_finite_step_and_term_are_named() -> None:
    watch = LossWatch(every=10)
    watch.add(20, terms(1.0))
    watch.add(21, terms(1.0, kl=float("inf")))
    watch.add(22, terms(float("nan")))
    with pytest.raises(NumericalError, match=r"'kl' is inf at epoch 3, step 21; .* last\.pt"):
        watch.check(epoch=2, last_good="last.pt")


def test_a_bad_step_is_not_reported_twice() -> None:
    watch = LossWatch(every=10)
    watch.add(0, terms(float("nan")))
    with pytest.raises(NumericalError):
        watch.check(epoch=0, last_good="last.pt")
    watch.add(1, terms(1.0))
    watch.check(epoch=0, last_good="last.pt")


def test_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match="every"):
        LossWatch(every=0)
