"""NaN/Inf detection of loss terms that does not make the device wait at every step."""

from __future__ import annotations

import torch
from torch import Tensor

from crckd.dist import all_reduce_mean
from crckd.errors import NumericalError


class LossWatch:
    """Collects the loss terms of recent steps and checks them all with one host read.

    Reading a loss back (`.item()`, `bool(...)`) makes the host wait for the device, which on a
    GPU stops the host from queueing the next step's work in advance. The trainer checks every
    `every` steps (when it also shows the loss) and at the end of each epoch, before anything is
    evaluated or saved, so a non-finite loss never reaches a checkpoint. Under DDP the ranks agree
    on the outcome, so that all of them stop together.
    """

    def __init__(self, every: int = 10) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self._pending: list[tuple[int, dict[str, Tensor], Tensor]] = []

    def add(self, step: int, terms: dict[str, Tensor]) -> None:
        """Remember this step's terms (detached) and whether all are finite, without a sync."""
        detached = {name: value.detach() for name, value in terms.items()}
        finite = torch.stack([value.float() for value in detached.values()]).isfinite().all()
        self._pending.append((step, detached, finite))

    @property
    def due(self) -> bool:
        return len(self._pending) >= self.every

    def check(self, epoch: int, last_good: str) -> None:
        """Raise NumericalError naming the first non-finite term since the last check.

        `epoch` counts from 0; `last_good` names the checkpoint to go back to.
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        finite = torch.stack([ok for _, _, ok in pending])
        if float(all_reduce_mean(finite.all().float())) == 1.0:
            return
        flags = finite.tolist()
        bad = [(step, terms) for (step, terms, _), ok in zip(pending, flags, strict=True) if not ok]
        if not bad:
            raise NumericalError(
                f"a loss term is not finite on another process at epoch {epoch + 1}, steps "
                f"{pending[0][0]}-{pending[-1][0]}; the last good checkpoint is {last_good}"
            )
        step, terms = bad[0]
        name, value = next((n, v) for n, v in terms.items() if not bool(v.isfinite().all()))
        raise NumericalError(
            f"loss term '{name}' is {value.item()} at epoch {epoch + 1}, step {step}; "
            f"the last good checkpoint is {last_good}"
        )
