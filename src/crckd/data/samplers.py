"""Batch sampling that gives the same global batches in one process or across many."""

from __future__ import annotations

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
            share = len(batch) // self.world_size
            yield [
                (index, self.seed) for index in batch[self.rank * share : (self.rank + 1) * share]
            ]

    def __len__(self) -> int:
        return len(self._global_batches())
