"""Contrast-index sampling for CCD: which memory rows each anchor is scored against (§d).

The reference draws these per sample inside the dataset with ``np.random`` (§d, §f.16). Here a
whole batch is drawn at once, vectorised per class, from an explicit ``torch.Generator``, so the
draw is cheap, reproducible and independent of DataLoader workers.

Every pool is a contiguous block of an index order, or that order minus one block: the training
indices sorted by class (a class's members, or all other classes for "sup") and the identity
order (all samples but the anchor, for "unsup"). Drawing from "order minus a block" is done by
drawing positions from the shorter range and shifting those at or past the block over it, so no
per-class list of negatives is ever stored (memory stays O(N)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

NEGATIVE_MODES = ("sup", "unsup")
POSITIVE_MODES = ("multi", "exact", "relax")


class ContrastSampler:
    """Draws CCD contrast indices for a batch: P positives from the anchor's class (anchor itself in
    slot 0), then K negatives (§d).

    ``labels`` are the training split's labels, position = training-set index. ``negatives``:
    "sup" draws from other classes only (CRCKD), "unsup" from every sample except the anchor
    (CRD). ``positives``: "multi" draws P members of the anchor's class (which may include the
    anchor again) and then puts the anchor in slot 0; "exact" (P = 1) is the anchor alone; "relax"
    (P = 1) is one random member of the anchor's class. ``num_positives`` is ignored for "exact"
    and "relax". A pool with at least as many members as needed is drawn without replacement,
    a smaller one with replacement (the reference's rule).
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
        self.labels = _as_labels(labels)
        self.negatives = negatives
        self.positives = positives
        self.num_negatives = num_negatives
        self._num_positives = num_positives if positives == "multi" else 1
        # Training indices grouped by class: class c occupies order[start[c] : start[c] + count[c]].
        self._order = torch.argsort(self.labels, stable=True)
        classes, counts = self.labels.unique(return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        self._block = {
            int(c): (int(s), int(n)) for c, s, n in zip(classes, starts, counts, strict=True)
        }
        self._check_negative_pools()

    def _check_negative_pools(self) -> None:
        if self.negatives == "unsup" and len(self.labels) < 2:
            raise ValueError("'unsup' negatives need at least 2 training samples")
        if self.negatives == "sup" and len(self._block) < 2:
            raise ValueError(
                "'sup' negatives come from other classes, but the training labels contain "
                f"only class(es) {sorted(self._block)}; use negatives='unsup' or more classes"
            )

    @property
    def num_positives(self) -> int:
        """P: the number of leading positive columns in each sampled row."""
        return self._num_positives

    def sample(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Contrast indices [B, P+K] (training-set positions) for the batch positions ``index``.

        Columns 0..P-1 are positives (column 0 is the anchor itself, except in "relax"), columns
        P.. are negatives. ``generator`` must be a CPU generator; the result is on
        ``index.device``.
        """
        index = torch.as_tensor(index)
        anchors = index.to(device="cpu", dtype=torch.long).flatten()
        p, k = self._num_positives, self.num_negatives
        out = torch.empty(len(anchors), p + k, dtype=torch.long)
        targets = self.labels[anchors]
        for c in targets.unique().tolist():
            rows = (targets == c).nonzero().flatten()
            start, count = self._block[c]
            out[rows, :p] = self._positives(anchors[rows], start, count, generator)
            if self.negatives == "sup":
                out[rows, p:] = _draw_outside(self._order, start, count, len(rows), k, generator)
        if self.negatives == "unsup":
            identity = torch.arange(len(self.labels))
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
