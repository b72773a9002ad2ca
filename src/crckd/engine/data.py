"""From a config to the tables, split and loaders a run trains on."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler

from crckd.config import Config
from crckd.data import (
    DataReport,
    ImageDataset,
    ImageTable,
    check_dataset,
    choose_labeled,
    load_labeled,
    load_split,
    load_table,
    make_split,
    split_indices,
)
from crckd.data.datasets import first_items
from crckd.data.samplers import GlobalBatchSampler
from crckd.data.unlabeled import (
    UnlabeledFiles,
    check_same_files,
    find_overlaps,
    list_unlabeled,
    overlap_lines,
)
from crckd.errors import ConfigError, DataError


@dataclass(frozen=True)
class PreparedData:
    """A dataset with its split resolved into positions of `table.frame`, the unlabelled images
    of a semi-supervised run, and the report of the dataset check (None when `data.check` is
    off).

    `train` holds the table's training images, those that keep their label first (in table
    order, then those that train unlabelled). The training list is `train` followed by the
    files of `unlabeled` (`train_paths`, `train_labels`: -1 for an unlabelled image); a
    training batch's "index" is a position in it. `labeled` is split.csv's `labeled` column
    (None: every training image keeps its label). The labels of the training images that
    train unlabelled are -1 in `table` itself: nothing after `prepare_data` can read them.
    `notes` are what the user should hear about the unlabelled images.
    """

    table: ImageTable
    split: pd.Series
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    check: DataReport | None = None
    labeled: pd.Series | None = None
    unlabeled: UnlabeledFiles | None = None
    notes: tuple[str, ...] = ()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.table.classes

    def labels(self, positions: np.ndarray) -> np.ndarray:
        return self.table.frame["label"].to_numpy()[positions]

    def paths(self, positions: np.ndarray) -> list[str]:
        return self.table.frame["path"].to_numpy()[positions].tolist()

    @property
    def n_labeled(self) -> int:
        """Labelled images of the training list (its first ones)."""
        return int((self.labels(self.train) >= 0).sum())

    @property
    def n_unlabeled(self) -> int:
        """Unlabelled images of the training list: the dataset's, then the folder's."""
        return len(self.train) - self.n_labeled + len(self.unlabeled or ())

    def train_paths(self) -> list[str]:
        """The training list's image paths."""
        return self.paths(self.train) + (self.unlabeled.paths if self.unlabeled else [])

    def train_labels(self) -> np.ndarray:
        """The training list's labels, -1 for each unlabelled image."""
        unlabeled = np.full(len(self.unlabeled or ()), -1, dtype=np.int64)
        return np.concatenate([self.labels(self.train), unlabeled])


def prepare_data(
    config: Config, *, split_file: Path | None = None, unlabeled_file: Path | None = None
) -> PreparedData:
    """Check the data (`data.check`), then read the dataset and its split (given or made),
    refusing empty or leaking splits. Any error of the check raises one DataError listing all.

    `split_file` (a resumed run's split.csv) takes precedence over `data.split_file`. With
    `data.labeled_fraction`, the training images that keep their label are those of the split
    file's `labeled` column, else a stratified, grouped choice (`data.split_seed`); the others'
    labels are hidden at once. With `data.unlabeled_root`, its images are listed and hashed:
    one that is a validation or test image is a DataError naming it, one that is a training
    image (or repeats another's content) is left out with a note. `unlabeled_file` (a resumed
    run's unlabeled.csv) must list exactly the files kept.
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
            unlabeled_root=data.unlabeled_root,
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
    labeled, notes = _labeled_part(config, table, split, split_file)
    if labeled is not None:
        table = _hide_labels(table, labeled)
    parts = {name: split_indices(split, table, name) for name in ("train", "val", "test")}
    for name, positions in parts.items():
        if len(positions) == 0:
            raise DataError(f"the {name} split of {data.root} is empty")
    known = table.frame["label"].to_numpy()[parts["train"]] >= 0
    train = np.concatenate([parts["train"][known], parts["train"][~known]])  # labelled first
    unlabeled = None
    if data.unlabeled_root is not None:
        unlabeled, found = _unlabeled_files(
            data.unlabeled_root, table, split, unlabeled_file, config.train.progress
        )
        notes += found
    return PreparedData(
        table,
        split,
        train,
        parts["val"],
        parts["test"],
        report,
        labeled,
        unlabeled,
        tuple(notes),
    )


def _labeled_part(
    config: Config, table: ImageTable, split: pd.Series, split_file: Path | None
) -> tuple[pd.Series | None, list[str]]:
    """Which training images keep their label (None: all), and a note saying so."""
    saved = load_labeled(split_file, split) if split_file is not None else None
    fraction = config.data.labeled_fraction
    if fraction is None:
        if saved is None or saved.all():
            return None, []
        return None, [
            f"{split_file} marks {int((~saved).sum())} training image(s) unlabelled (its "
            "labeled column), but data.labeled_fraction is not set: every training image "
            "trains with its label"
        ]
    source = f"the labeled column of {split_file}"
    if saved is None:
        saved = choose_labeled(table, split, fraction, config.data.split_seed)
        source = f"data.labeled_fraction={fraction}, data.split_seed={config.data.split_seed}"
    return saved, [
        f"{int(saved.sum())} of the {len(saved)} training images keep their label ({source}); "
        f"the other {int((~saved).sum())} train as unlabelled images"
    ]


def _hide_labels(table: ImageTable, labeled: pd.Series) -> ImageTable:
    """The table with label -1 for each training image that trains unlabelled."""
    hidden = table.frame["image_id"].isin(labeled.index[~labeled.to_numpy()])
    frame = table.frame.assign(label=np.where(hidden, -1, table.frame["label"].to_numpy()))
    return replace(table, frame=frame)


def _unlabeled_files(
    root: Path, table: ImageTable, split: pd.Series, saved: Path | None, progress: bool
) -> tuple[UnlabeledFiles, list[str]]:
    """The images of an unlabelled folder a run trains on, and notes on those left out."""
    files = list_unlabeled(root, progress=progress)
    notes = []
    repeats = files.repeated()
    if repeats:
        notes.append(
            f"{len(repeats)} file(s) under {files.root} repeat the content of an earlier one, "
            f"each counted once: {first_items(repeats)}"
        )
        files = files.without(set(repeats))
    overlaps = find_overlaps(files, table, split, progress=progress)
    leaks = [overlap for overlap in overlaps if overlap.split != "train"]
    if leaks:
        raise DataError(
            f"{len(leaks)} unlabelled image(s) under {files.root} are validation or test images "
            f"of {table.root}, a leak; nothing was written. Remove them from the folder: "
            f"{overlap_lines(leaks)}"
        )
    if overlaps:
        notes.append(
            f"{len(overlaps)} file(s) under {files.root} are training images of {table.root}, "
            f"each counted once (as the training image): {overlap_lines(overlaps)}"
        )
        files = files.without({overlap.file for overlap in overlaps})
    if not len(files):
        raise DataError(f"no image under {files.root} is left to train on as unlabelled")
    if saved is not None:
        check_same_files(files, saved)
    return files, notes


def labeled_batch_size(config: Config, world_size: int) -> int | None:
    """The labelled images of each global batch of a run with unlabelled images (None for a
    run without: then `data.labeled_batch_size` may not be set). Refuses sizes the batch or the
    processes cannot take."""
    data, batch = config.data, config.train.batch_size
    if data.labeled_fraction is None and data.unlabeled_root is None:
        if data.labeled_batch_size is not None:
            raise ConfigError(
                f"data.labeled_batch_size={data.labeled_batch_size} is set, but the run has no "
                "unlabelled images: set data.labeled_fraction or data.unlabeled_root, or unset it"
            )
        return None
    size = data.labeled_batch_size
    given = f"data.labeled_batch_size={size}"
    if size is None:
        size, given = batch // 4, f"a quarter of train.batch_size={batch} ({batch // 4})"
    if not 2 * world_size <= size < batch or size % world_size:
        raise ConfigError(
            f"labelled images per batch: {given} must be below train.batch_size={batch}, a "
            f"multiple of the {world_size} process(es) and at least 2 per process (set "
            "data.labeled_batch_size)"
        )
    return size


def class_weights(labels: np.ndarray, classes: tuple[str, ...]) -> torch.Tensor:
    """w_c = N / n_c over the labelled training images (§b weighted CE); unlabelled ones (-1)
    do not count; every class must be present."""
    labels = labels[labels >= 0]
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
    images: Sequence[Image.Image] | None = None,
    rank: int = 0,
    world_size: int = 1,
    batch_sampler: Sampler[list[tuple[int, int]]] | None = None,
) -> DataLoader:
    """A loader whose batches and augmentations follow `seed` exactly.

    Shuffled (training) loaders draw global batches of `batch_size` and give this rank its
    share (`GlobalBatchSampler`, or the given `batch_sampler` of `(index, seed)` keys, such as a
    `SemiBatchSampler`; `loader.batch_sampler.set_seed` moves it to another epoch), and draw
    each image's augmentation from (seed, index), so batches and augmentations are the same
    whatever the number of ranks and workers, and a resumed run replays them. Workers persist
    across passes (epochs), so an epoch's training or evaluation does not wait for new worker
    processes to start. `images` may be any indexable source of decoded images.
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
        sampler = batch_sampler or GlobalBatchSampler(
            len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size
        )
        return DataLoader(dataset, batch_sampler=sampler, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **common)
