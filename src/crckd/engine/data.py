"""From a config to the tables, split and loaders a run trains on."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from crckd.config import Config
from crckd.data import (
    DataReport,
    ImageDataset,
    ImageTable,
    check_dataset,
    load_split,
    load_table,
    make_split,
    split_indices,
)
from crckd.data.cache import DecodedImages
from crckd.data.samplers import GlobalBatchSampler
from crckd.errors import ConfigError, DataError


@dataclass(frozen=True)
class PreparedData:
    """A dataset with its split resolved into positions of `table.frame`, and the report of
    the dataset check (None when `data.check` is off)."""

    table: ImageTable
    split: pd.Series
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    check: DataReport | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.table.classes

    def labels(self, positions: np.ndarray) -> np.ndarray:
        return self.table.frame["label"].to_numpy()[positions]

    def paths(self, positions: np.ndarray) -> list[str]:
        return self.table.frame["path"].to_numpy()[positions].tolist()


def prepare_data(config: Config, *, split_file: Path | None = None) -> PreparedData:
    """Check the data (`data.check`), then read the dataset and its split (given or made),
    refusing empty or leaking splits. Any error of the check raises one DataError listing all.

    `split_file` (a resumed run's split.csv) takes precedence over `data.split_file`.
    """
    data = config.data
    if data.root is None:
        raise ConfigError("data.root is not set: point it at the dataset folder")
    split_file = split_file or data.split_file
    report = None
    if data.check:
        report = check_dataset(
            data.dataset,
            data.root,
            csv=data.csv,
            classes=data.classes,
            split_file=split_file,
            progress=config.train.progress,
        )
        if not report.ok:
            raise DataError(
                f"the dataset check found errors; nothing was written\n{report.format()}"
            )
    table = load_table(data.dataset, data.root, csv=data.csv, classes=data.classes)
    if split_file is not None:
        split = load_split(split_file, table)
    else:
        split = make_split(
            table,
            scheme=data.split,
            seed=data.split_seed,
            test_fraction=data.test_fraction,
            val_fraction=data.val_fraction,
            n_folds=data.n_folds,
            fold=data.fold,
        )
    parts = {name: split_indices(split, table, name) for name in ("train", "val", "test")}
    for name, positions in parts.items():
        if len(positions) == 0:
            raise DataError(f"the {name} split of {data.root} is empty")
    return PreparedData(table, split, parts["train"], parts["val"], parts["test"], report)


def class_weights(labels: np.ndarray, classes: tuple[str, ...]) -> torch.Tensor:
    """w_c = N / n_c over the training split (§b weighted CE); every class must be present."""
    counts = np.bincount(labels, minlength=len(classes))
    missing = [classes[c] for c in np.flatnonzero(counts == 0)]
    if missing:
        raise DataError(f"no training image for class(es) {', '.join(missing)}")
    return torch.tensor(len(labels) / counts, dtype=torch.float32)


def resolve_workers(setting: int | str, device: torch.device) -> int:
    """`auto`: up to 8 loader processes on CUDA; none on the CPU, where they would compete
    with the model for the same cores."""
    if setting != "auto":
        return int(setting)
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed seed per (run seed, epoch), so a resumed epoch replays exactly."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _seed_worker(worker_id: int) -> None:
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_loader(
    paths: list[str],
    labels: np.ndarray | None,
    transform: Callable,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    views: int = 1,
    seed: int = 0,
    pin_memory: bool = False,
    images: DecodedImages | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A loader whose batches and augmentations follow `seed` exactly.

    Shuffled (training) loaders draw global batches of `batch_size` and give this rank its
    share (`GlobalBatchSampler`; `loader.batch_sampler.set_seed` moves it to another epoch),
    and draw each image's augmentation from (seed, index), so batches and augmentations are the
    same whatever the number of ranks and workers, and a resumed run replays them. Workers
    persist across passes (epochs), so an epoch's training or evaluation does not wait for new
    worker processes to start.
    """
    label_list = None if labels is None else labels.tolist()
    dataset = ImageDataset(paths, label_list, transform, views, images=images)
    common = {
        "num_workers": num_workers,
        "worker_init_fn": _seed_worker,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
        # Its own generator: each new iterator draws a seed, which would otherwise come from
        # the global one (every epoch without workers, once with persistent workers), so the
        # model's random draws (dropout) would depend on the number of workers and on resuming.
        "generator": torch.Generator(),
    }
    if shuffle:
        sampler = GlobalBatchSampler(
            len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size
        )
        return DataLoader(dataset, batch_sampler=sampler, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **common)
