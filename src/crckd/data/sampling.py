"""Contrast-index sampling for CCD: which memory rows each anchor is scored against (§d).

The reference draws these per sample inside the dataset with ``np.random`` (§d, §f.16). Here a
whole batch is drawn at once, vectorised per class, from an explicit ``torch.Generator``, so the
draw is cheap, reproducible and independent of DataLoader workers.

Every pool is a contiguous block of an index order, or that order minus one block: the training
indices sorted by class (a class's members, or all other classes for "sup") and the identity
order (all samples but the anchor, for "unsup"). Drawing from "order minus a block" is done by
drawing positions from the shorter range and shifting those at or past the block over it, so no
per-class list of negatives is ever stored (memory stays O(N)).

A label may be -1, "no class" (an unlabelled image without a pseudo-label). Those rows sort
first, so the rows with a class are the contiguous tail of the order, and "other known classes"
is that tail minus one block. A row without a class is never a positive or a "sup" negative of
a class-guided anchor; as an anchor it is contrasted as an instance (itself the positive, any
other row a negative). The labels can change (pseudo-labels come and go): :meth:`relabel`
rebuilds the order, a sort of N integers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

NEGATIVE_MODES = ("sup", "unsup")
POSITIVE_MODES = ("multi", "exact", "relax")
NO_CLASS = -1


class ContrastSampler:
    """Draws CCD contrast indices for a batch: P positives from the anchor's class (anchor itself in
    slot 0), then K negatives (§d).

    ``labels`` are the training split's labels, position = training-set index, -1 for a row
    without a class. ``negatives``: "sup" draws from other classes only (CRCKD), "unsup" from
    every sample except the anchor (CRD). ``positives``: "multi" draws P members of the anchor's
    class (which may include the anchor again) and then puts the anchor in slot 0; "exact"
    (P = 1) is the anchor alone; "relax" (P = 1) is one random member of the anchor's class.
    ``num_positives`` is ignored for "exact" and "relax". A pool with at least as many members
    as needed is drawn without replacement, a smaller one with replacement (the reference's
    rule). An anchor without a class gets an instance contrast in every mode: each positive
    column is the anchor, the negatives come from every other row.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | Tensor,
        num_positives: int = 20,
        num_negatives: int = 4096,
        negatives: str = "sup",
        positives: str = "multi",
    ) -> None:
        if negatives not in NEGATIVE_MODES:
            raise ValueError(f"negatives must be one of {NEGATIVE_MODES}, got {negatives!r}")
        if positives not in POSITIVE_MODES:
            raise ValueError(f"positives must be one of {POSITIVE_MODES}, got {positives!r}")
        if num_positives < 1 or num_negatives < 1:
            raise ValueError(
                "num_positives and num_negatives must be >= 1, "
                f"got {num_positives} and {num_negatives}"
            )
        self.negatives = negatives
        self.positives = positives
        self.num_negatives = num_negatives
        self._num_positives = num_positives if positives == "multi" else 1
        self._index(_as_labels(labels))

    def _index(self, labels: Tensor) -> None:
        """Take ``labels`` and group the training indices by class: class c occupies
        order[start[c] : start[c] + count[c]], after the ``_unknown`` rows without a class."""
        if len(labels) and labels.min() < NO_CLASS:
            raise ValueError(f"labels must be class indices or {NO_CLASS} (no class)")
        order = torch.argsort(labels, stable=True)
        classes, counts = labels.unique(return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        block = {int(c): (int(s), int(n)) for c, s, n in zip(classes, starts, counts, strict=True)}
        unknown = block.pop(NO_CLASS, (0, 0))[1]
        _check_negative_pools(self.negatives, len(labels), block)
        self.labels, self._order, self._block, self._unknown = labels, order, block, unknown

    def relabel(self, index: Tensor, labels: Tensor) -> None:
        """Set the labels of the training positions ``index`` (host tensors) to ``labels``.

        The order is rebuilt only if a label changed; a change that would leave "sup" without
        two classes raises ValueError and keeps the old labels.
        """
        index, labels = index.cpu().long(), labels.cpu().long()
        if torch.equal(self.labels[index], labels):
            return
        updated = self.labels.clone()
        updated[index] = labels
        self._index(updated)

    @property
    def num_positives(self) -> int:
        """P: the number of leading positive columns in each sampled row."""
        return self._num_positives

    def sample(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Contrast indices [B, P+K] (training-set positions) for the batch positions ``index``.

        Columns 0..P-1 are positives (column 0 is the anchor itself, except in "relax" for an
        anchor with a class), columns P.. are negatives. ``generator`` must be a CPU generator;
        the result is on ``index.device``.
        """
        index = torch.as_tensor(index)
        anchors = index.to(device="cpu", dtype=torch.long).flatten()
        p, k = self._num_positives, self.num_negatives
        out = torch.empty(len(anchors), p + k, dtype=torch.long)
        targets = self.labels[anchors]
        identity = torch.arange(len(self.labels))
        for c in targets.unique().tolist():
            rows = (targets == c).nonzero().flatten()
            if c == NO_CLASS:  # an instance contrast: the anchor, against any other row
                out[rows, :p] = anchors[rows].unsqueeze(1)
                if self.negatives == "sup":
                    anchor = anchors[rows].unsqueeze(1)
                    out[rows, p:] = _draw_outside(identity, anchor, 1, len(rows), k, generator)
                continue
            start, count = self._block[c]
            out[rows, :p] = self._positives(anchors[rows], start, count, generator)
            if self.negatives == "sup":  # the known rows, minus the anchor's class
                known = self._order[self._unknown :]
                out[rows, p:] = _draw_outside(
                    known, start - self._unknown, count, len(rows), k, generator
                )
        if self.negatives == "unsup":
            out[:, p:] = _draw_outside(
                identity, anchors.unsqueeze(1), 1, len(anchors), k, generator
            )
        return out.to(index.device)

    def _positives(
        self, anchors: Tensor, start: int, count: int, generator: torch.Generator | None
    ) -> Tensor:
        """[n, P] positives for anchors whose class occupies ``order[start : start + count]``."""
        if self.positives == "exact":
            return anchors.unsqueeze(1)
        picks = _draw_positions(count, len(anchors), self._num_positives, generator)
        pos = self._order[start + picks]
        if self.positives == "multi":
            pos[:, 0] = anchors
        return pos


def _check_negative_pools(negatives: str, size: int, block: dict[int, tuple[int, int]]) -> None:
    """Every anchor needs negatives: another row ("unsup"), another class ("sup")."""
    if negatives == "unsup" and size < 2:
        raise ValueError("'unsup' negatives need at least 2 training samples")
    if negatives == "sup" and len(block) < 2:
        known = f"only class(es) {sorted(block)}" if block else "no class"
        raise ValueError(
            f"'sup' negatives come from other classes, but the training labels have {known}; "
            "use negatives='unsup' or more classes"
        )


def _as_labels(labels: Sequence[int] | np.ndarray | Tensor) -> Tensor:
    """Labels as a 1-D CPU LongTensor."""
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu()
    out = torch.as_tensor(np.asarray(labels)).long()
    if out.ndim != 1:
        raise ValueError(f"labels must be 1-D (one class index per sample), got shape {out.shape}")
    return out


def _draw_positions(n: int, rows: int, k: int, generator: torch.Generator | None) -> Tensor:
    """[rows, k] positions in [0, n): without replacement per row if n >= k, else with."""
    if n >= k:
        keys = torch.rand(rows, n, generator=generator)
        return keys.topk(k, dim=1, sorted=False).indices
    return torch.randint(n, (rows, k), generator=generator)


def _draw_outside(
    order: Tensor,
    start: int | Tensor,
    width: int,
    rows: int,
    k: int,
    generator: torch.Generator | None,
) -> Tensor:
    """[rows, k] entries of ``order`` outside the block ``order[start : start + width]``.

    Positions are drawn uniformly from the len(order) - width remaining ones (with or without
    replacement by :func:`_draw_positions`); those >= start skip over the block. ``start`` may be
    a [rows, 1] tensor to exclude a different block per row.
    """
    picks = _draw_positions(len(order) - width, rows, k, generator)
    return order[picks + (picks >= start).long() * width]
