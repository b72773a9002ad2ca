"""Batch sampling that gives the same global batches in one process or across many."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Shuffled batches of `batch_size` (the global batch), each cut into contiguous per-rank
    chunks, so that N processes see exactly the batches one process would.

    The permutation depends only on `seed` (set once per epoch with `set_seed`). Each batch is a
    list of `(index, seed)` keys: `ImageDataset` draws an image's augmentation from them, so a
    loader's persistent workers follow the epoch without being restarted. A short last batch is
    cut to a multiple of the number of ranks (its last images are left out) and dropped if that
    leaves any rank fewer than two images (BatchNorm cannot train on one); in one process only
    a last batch of one image is dropped.
    """

    def __init__(
        self, size: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} ranks")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size

    def _global_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self.size, generator=generator).tolist()
        batches = [order[i : i + self.batch_size] for i in range(0, self.size, self.batch_size)]
        if batches:
            share = len(batches[-1]) // self.world_size
            batches[-1] = batches[-1][: share * self.world_size]
            if share < 2:
                batches.pop()
        return batches

    def set_seed(self, seed: int) -> None:
        """The epoch's seed: its permutation and its augmentations."""
        self.seed = seed

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self._global_batches():
            yield [(index, self.seed) for index in _share(batch, self.rank, self.world_size)]

    def __len__(self) -> int:
        return len(self._global_batches())


class SemiBatchSampler(Sampler[list[tuple[int, int]]]):
    """Global batches of `labeled_batch_size` labelled images completed with unlabelled ones to
    `batch_size`, the same in one process or across many: each rank takes its contiguous share
    of the global batch, as with `GlobalBatchSampler`, and that share holds its contiguous share
    of each part, in the batch's proportion.

    The images are indexed labelled first (0..labeled-1), then unlabelled. An epoch is one pass
    over the labelled images in a seeded order. The unlabelled images are taken in turn from a
    seeded permutation of them; a batch that needs more than the permutation has left starts a
    new one, so no image is twice in a batch (unless a batch needs more than there are). A
    global batch interleaves the two parts in equal groups (as many as the greatest common
    divisor of their sizes: 4 labelled and 12 unlabelled images are 4 groups of 1 + 3), so that
    N ranks' contiguous shares are exactly the one-process batch, row for row, and draws made
    for the global batch's rows (the teacher's rotations) stay the same. Everything follows
    `seed` only (set once per epoch with `set_seed`), and each batch is a list of
    `(index, seed)` keys. A short last labelled batch keeps the proportion (its unlabelled part
    is cut to match), each part is cut to a multiple of the number of ranks, and the batch is
    dropped if that leaves a rank fewer than two labelled images. `labeled_only` yields the
    labelled rows of the same shares alone (for a method that does not learn from unlabelled
    images).
    """

    def __init__(
        self,
        labeled: int,
        unlabeled: int,
        batch_size: int,
        labeled_batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        labeled_only: bool = False,
    ) -> None:
        if not 0 < labeled_batch_size < batch_size:
            raise ValueError(
                f"labelled batch size {labeled_batch_size} is not in 1..{batch_size - 1}"
            )
        if batch_size % world_size or labeled_batch_size % world_size:
            raise ValueError(
                f"batch size {batch_size} and labelled batch size {labeled_batch_size} must both "
                f"be divisible by {world_size} ranks"
            )
        if unlabeled < 1:
            raise ValueError("no unlabelled image to complete the batches with")
        self.labeled, self.unlabeled = labeled, unlabeled
        self.batch_size, self.labeled_batch_size = batch_size, labeled_batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.labeled_only = labeled_only

    def _labeled_sizes(self) -> list[int]:
        """The number of labelled images of each global batch."""
        full, rest = divmod(self.labeled, self.labeled_batch_size)
        last = rest // self.world_size * self.world_size
        return [self.labeled_batch_size] * full + ([last] if last // self.world_size >= 2 else [])

    def _global_batches(self) -> list[tuple[list[int], list[int]]]:
        """(labelled, unlabelled) indices of each global batch."""
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self.labeled, generator=generator).tolist()
        extra = self.batch_size - self.labeled_batch_size
        world = self.world_size
        labeled = self._labeled_sizes()
        unlabeled = [n * extra // self.labeled_batch_size // world * world for n in labeled]
        batches, cycle, position = [], [], 0
        for i, (n, m) in enumerate(zip(labeled, unlabeled, strict=True)):
            if position + m > len(cycle):  # not enough left: the next permutation(s)
                rounds = -(-m // self.unlabeled)
                draws = [torch.randperm(self.unlabeled, generator=generator) for _ in range(rounds)]
                cycle, position = (torch.cat(draws) + self.labeled).tolist(), 0
            start = i * self.labeled_batch_size
            batches.append((order[start : start + n], cycle[position : position + m]))
            position += m
        return batches

    def set_seed(self, seed: int) -> None:
        """The epoch's seed: its order, its unlabelled images and its augmentations."""
        self.seed = seed

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for labeled, unlabeled in self._global_batches():
            mine = _share(_interleave(labeled, unlabeled), self.rank, self.world_size)
            if self.labeled_only:
                mine = [index for index in mine if index < self.labeled]
            yield [(index, self.seed) for index in mine]

    def __len__(self) -> int:
        return len(self._labeled_sizes())


def _interleave(first: list[int], second: list[int]) -> list[int]:
    """The two lists in equal groups, one group of each in turn (as many groups as the greatest
    common divisor of their lengths)."""
    groups = math.gcd(len(first), len(second))
    a, b = len(first) // groups, len(second) // groups
    return [
        i
        for g in range(groups)
        for i in (*first[g * a : (g + 1) * a], *second[g * b : (g + 1) * b])
    ]


def _share(batch: list[int], rank: int, world_size: int) -> list[int]:
    """Rank `rank`'s contiguous chunk of a batch (its length a multiple of `world_size`)."""
    share = len(batch) // world_size
    return batch[rank * share : (rank + 1) * share]
